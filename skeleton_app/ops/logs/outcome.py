"""What `collect_logs` got from one node, as a typed frozen value (`LogsOutcome`, in
`NodeResult.outcome`); `as_dict()` is its JSON form (the keys `--json` has always printed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from skeleton_app.ops.logs.records import LogSource


@dataclass(frozen=True, slots=True)
class LogsOutcome:
    """The node's file under OUT (written even when the node failed: its header says why)
    and the sources in it, in order."""

    file: str
    sources: tuple[LogSource, ...] = ()

    @property
    def lines(self) -> int:
        return sum(s.lines for s in self.sources)

    @property
    def missing(self) -> tuple[LogSource, ...]:
        """Sources that were not read whole: missing, unreadable, cut, ..."""
        return tuple(s for s in self.sources if s.status != "ok")

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sources": [s.as_dict() for s in self.sources],
                "lines": self.lines}
