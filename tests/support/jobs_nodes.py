"""Registry rows for the jobs unit tests (routing, dispatcher, facade): NodeEntry values as
the registry returns them, with heartbeat metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from skeleton_app.registry.records import NodeDefaults, NodeEntry, NodeSpec

NOW = datetime(2026, 12, 6, 14, 0, 0, tzinfo=UTC)


def entry(node_id: str, roles: Sequence[str] = ("stt_batch",), *, cpus: int = 2,
          cpu_busy: float | None = None, load: float | None = 0.0,
          mem: tuple[int, int] | None = (1000, 1000), labels: Mapping[str, str] | None = None,
          seen: float | None = 1.0, enabled: bool = True, approved: bool = True,
          gpus: Sequence[tuple[int, int]] | None = None, now: datetime = NOW,
          app_dir: str = "/srv/app") -> NodeEntry:
    """A node `seen` s ago; mem = (total, available); gpus = [(free MiB, total MiB)]."""
    spec = NodeSpec(id=node_id, host=f"{node_id}.test", roles=tuple(roles),
                    labels=dict(labels or {}), capabilities={"cpu_count": cpus},
                    app_dir=app_dir)
    node = spec.resolve(NodeDefaults(user="tester"))
    metrics: dict[str, Any] = {}
    if cpu_busy is not None:
        metrics["cpu_busy"] = cpu_busy
    if load is not None:
        metrics["load"] = [load, load, load]
    if mem is not None:
        metrics["mem_total"], metrics["mem_available"] = mem
    if gpus is not None:
        metrics["gpu"] = {"state": "ok", "gpus": [
            {"index": i, "name": "gpu", "memory_free_mib": free, "memory_total_mib": total}
            for i, (free, total) in enumerate(gpus)]}
    return NodeEntry(spec=spec, node=node, enabled=enabled, approved=approved,
                     last_seen=None if seen is None else now - timedelta(seconds=seen),
                     seen_ago=seen, metrics=metrics)


class Nodes:
    """A `NodeSource` over a list the test changes as it goes."""

    def __init__(self, entries: Sequence[NodeEntry]):
        self.entries = list(entries)

    def list_entries(self, *, enabled_only: bool = False
                     ) -> tuple[tuple[NodeEntry, ...], tuple[str, ...]]:
        rows = [e for e in self.entries if e.enabled or not enabled_only]
        return tuple(rows), ()
