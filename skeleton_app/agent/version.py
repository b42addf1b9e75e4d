"""What code a daemon runs (`code_version`), computed once at start and reported with every
heartbeat and in /health.

In order: the version deploy wrote (the first word of `.skeleton-deploy/digest`), else the
git revision, else `tree:` and the digest of the app dir as deploy computes it.

One tree digest, not two: the fallback is `transfers.tree.tree_digest`, over the same
excludes as deploy's (`digest_excludes`), so `tree:X` says that a deploy of an identical
tree would have written version X. It reads every file once per daemon start (no hash cache:
a daemon writes nothing outside its app dir and logs), like the daemon's own digest it
replaces (which also hashed a different selection of files, so its value matched nothing).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

from skeleton_app import layout
from skeleton_app.errors import UsageError

log = logging.getLogger("skeleton_app.agent")


def digest_excludes(exclude: Iterable[str]) -> tuple[str, ...]:
    """The excludes deploy digests a tree with (`ops.deploy.plan`'s `digest_excludes`): the
    configured ones, the node's own state (deploy dir, pid and lock files) and the partial
    dir. tests/unit/test_agent_version.py keeps the two equal."""
    # Imported here, not at the top: transfers pulls in the SSH layer (paramiko, ~100 ms),
    # which a daemon needs only on the fallback path that calls this.
    from skeleton_app.transfers import DEFAULT_PARTIAL_DIR

    return (*exclude, f"/{layout.DEPLOY_DIR}/", f"/{layout.PID_FILE}", f"/{layout.LOCK_FILE}",
            f"{DEFAULT_PARTIAL_DIR}/")


def code_version(app_dir: str | os.PathLike[str], *, exclude: Iterable[str] = ()) -> str:
    """What code runs here: the deploy digest's version, else the git revision, else a digest
    of the tree (`tree:` + 16 hex). Computed once at start: it is what this process runs."""
    root = Path(app_dir)
    try:
        first = (root / layout.DIGEST_FILE).read_text().split(maxsplit=1)
        if first and first[0].isalnum():
            return first[0][:64]
    except OSError:
        pass
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        proc = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
        rev = proc.stdout.strip()
        if proc.returncode == 0 and rev.isalnum():
            return f"git:{rev}"
    return _tree_version(root, exclude)


def _tree_version(root: Path, exclude: Iterable[str]) -> str:
    from skeleton_app.transfers.tree import tree_digest  # lazily: see digest_excludes

    try:
        return "tree:" + tree_digest(root, digest_excludes(exclude), cache=False).version
    except UsageError as exc:  # a file rsync could not send either: no version to claim
        log.warning("cannot digest %s for the code version: %s", root, exc)
        return "tree:unreadable"
