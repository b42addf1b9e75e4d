"""What sync-models reports for one target: a frozen `SyncOutcome` in `NodeResult.outcome`.

`as_dict()` is its JSON form (the "data" of each node in `--json`, unchanged from when these
facts travelled as string keys); `summary()` is the one line a synced target prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["up-to-date", "synced", "repaired", "refused", "failed"]


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    """One target of a sync. `status`: up-to-date, synced, repaired (synced, and files of its
    published copy were wrong), refused (short of disk: nothing moved) or failed."""

    status: Status
    source: str  # the source node's id
    models: tuple[str, ...]  # the models it holds (or was to receive)
    moved: int  # bytes received in this run
    seconds: float  # time spent receiving
    rate: float  # bytes per second while receiving
    via: tuple[str, ...]  # how each transfer went: "chain from node-01", "rsync from ..."
    repaired: tuple[str, ...]  # NAME/rel of published files found wrong and replaced
    rerouted: tuple[str, ...]  # failed pairs routed around to serve it
    path: str  # its models directory

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "source": self.source, "models": list(self.models),
            "bytes": self.moved, "seconds": self.seconds, "rate": self.rate,
            "via": list(self.via), "repaired": list(self.repaired),
            "rerouted": list(self.rerouted), "path": self.path,
        }

    def summary(self) -> str:
        """"up to date", or "synced: 1.0 MiB in 0.3s (chain from node-01)"."""
        if self.status == "up-to-date":
            return "up to date"
        text = f"{self.status}: {size_text(self.moved)} in {self.seconds:.1f}s"
        if self.via:
            text += f" ({self.via[-1]})"
        return text


def size_text(n: float) -> str:
    """A byte count for people: "512 B", "1.5 MiB" (binary units, up to GiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
