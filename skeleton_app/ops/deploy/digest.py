"""The digest file deploy.sh keeps on each node (DEST/.skeleton-deploy/digest): its parsed
form (`DeployedDigest`) and the lines a commit writes (`digest_lines`).

Line 1 is the code version `cluster status` shows; then `key=value` lines. No line is "."
(it ends the `commit` request in deploy.sh's protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from skeleton_app.transfers.tree import TreeDigest


@dataclass(frozen=True, slots=True)
class DeployedDigest:
    """The digest file on a node (written by `commit`)."""

    version: str | None = None
    tree: str | None = None
    delete: bool = False
    deployed_at: str | None = None
    deployed_by: str | None = None
    release: str | None = None  # deploy.strategy releases: the release it describes

    @classmethod
    def parse(cls, lines: Sequence[str]) -> DeployedDigest:
        if not lines:
            return cls()
        values = dict(line.partition("=")[::2] for line in lines[1:] if "=" in line)
        return cls(version=lines[0].strip() or None, tree=values.get("tree") or None,
                   delete=values.get("delete") == "1", deployed_at=values.get("deployed_at"),
                   deployed_by=values.get("deployed_by"), release=values.get("release"))

    def covers(self, tree: TreeDigest, *, delete: bool) -> bool:
        """Is a deploy of `tree` already in place? A tree deployed without --delete may
        have left extra files: a --delete deploy of the same tree still runs."""
        return self.tree == tree.hex and (self.delete or not delete)


def digest_lines(digest: TreeDigest, *, delete: bool, owner: str, source: str) -> list[str]:
    """The digest file: line 1 the code version; then key=value lines (no line is ".")."""
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    clean = source.replace("\\", "\\\\").replace("\n", "\\n")
    return [digest.version, f"tree={digest.hex}", f"files={digest.files}",
            f"bytes={digest.bytes}", f"delete={int(delete)}", f"deployed_at={when}",
            f"deployed_by={owner}", f"source={clean}"]
