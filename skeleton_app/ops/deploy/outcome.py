"""What a deploy did on one node, as a typed frozen value (`DeployOutcome`, in
`NodeResult.outcome`). `as_dict()` is its JSON form: the keys `--json` has always printed,
each present only once the deploy got that far (no `version` before the lock was taken, no
`changes` before a transfer, ...)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from skeleton_app.ops.deploy.diff import NodeDiff
from skeleton_app.results import ClusterResult
from skeleton_app.transfers import FileChange, TransferResult, TransferStats

MAX_CHANGES_KEPT = 10000  # per node in the result; the counters stay exact


@dataclass(frozen=True, slots=True)
class Transfer:
    """What rsync did (or, in a dry run, would do). `changes` holds at most
    MAX_CHANGES_KEPT items; `changes_total` counts them all."""

    changes: tuple[FileChange, ...] = ()
    changes_total: int = 0
    files_changed: int = 0
    bytes_sent: int = 0
    stats: TransferStats | None = None

    @classmethod
    def of(cls, tr: TransferResult) -> Transfer:
        return cls(changes=tr.changes[:MAX_CHANGES_KEPT], changes_total=len(tr.changes),
                   files_changed=tr.files_changed, bytes_sent=tr.bytes_sent, stats=tr.stats)

    def as_dict(self) -> dict[str, Any]:
        return {"changes": [c.as_dict() for c in self.changes],
                "changes_total": self.changes_total, "files_changed": self.files_changed,
                "bytes_sent": self.bytes_sent,
                "stats": self.stats.as_dict() if self.stats else None}


@dataclass(frozen=True, slots=True)
class AfterRun:
    """One `deploy.after` command and how it ended."""

    command: str
    exit_code: int | None
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"command": self.command, "exit_code": self.exit_code, "error": self.error}


@dataclass(frozen=True, slots=True)
class DeployOutcome:
    """One node's deploy. `version` and `previous` (the code versions deployed now and
    before) are set once the lock was taken; `unchanged` is True when the node already had
    this tree (nothing sent); `daemon_stop`/`daemon_start` are the daemon's replies of a
    `restart`; `message` says why the node failed, when it ran and failed."""

    dest: str
    dry_run: bool = False
    locked: bool = False
    previous: str | None = None
    version: str | None = None
    daemon_stop: Mapping[str, object] | None = None
    unchanged: bool | None = None  # None: no transfer decided (dry run, failed before it)
    transfer: Transfer | None = None
    after: tuple[AfterRun, ...] = ()
    daemon_start: Mapping[str, object] | None = None
    message: str | None = None
    diff: NodeDiff | None = None  # deploy --diff: the node's file diffs
    release: str | None = None  # deploy.strategy releases: the release made (and switched to)

    @property
    def files_changed(self) -> int:
        return self.transfer.files_changed if self.transfer else 0

    @property
    def bytes_sent(self) -> int:
        return self.transfer.bytes_sent if self.transfer else 0

    @property
    def changes(self) -> tuple[FileChange, ...]:
        return self.transfer.changes if self.transfer else ()

    @property
    def changes_total(self) -> int:
        return self.transfer.changes_total if self.transfer else 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dest": self.dest, "dry_run": self.dry_run}
        if self.locked:
            out.update(previous=self.previous, version=self.version)
        if self.daemon_stop is not None:
            out["daemon_stop"] = dict(self.daemon_stop)
        if self.unchanged is not None:
            out["unchanged"] = self.unchanged
        if self.transfer is not None:
            out.update(self.transfer.as_dict())
        if self.after:
            out["after"] = [a.as_dict() for a in self.after]
        if self.daemon_start is not None:
            out["daemon_start"] = dict(self.daemon_start)
        if self.message is not None:
            out["message"] = self.message
        if self.diff is not None:
            out["diff"] = self.diff.as_dict()
        if self.release is not None:
            out["release"] = self.release
        return out


def iter_changes(result: ClusterResult[DeployOutcome]) -> Iterator[tuple[str, FileChange]]:
    """(node, change) pairs of a deploy result, for listings."""
    for node, outcome in result.outcomes().items():
        for change in outcome.changes:
            yield node, change
