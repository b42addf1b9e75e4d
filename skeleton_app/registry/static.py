"""StaticRegistry: config.yaml's `nodes:` list when no database is configured."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from skeleton_app.errors import ConfigError
from skeleton_app.nodes import Node
from skeleton_app.registry.records import NodeEntry, NodeSpec, RunRecord

if TYPE_CHECKING:
    from skeleton_app.registry.metrics_history import MetricSample
    from skeleton_app.results import ClusterResult


class StaticRegistry:
    """config.yaml's `nodes:` list. Read-only; runs are not recorded (no database)."""

    def __init__(self, nodes: Sequence[Node], *, source: str | None = None):
        self._nodes = tuple(nodes)
        self._source = source or "config.yaml"

    @property
    def source(self) -> str:
        return f"{self._source} nodes:"

    def __enter__(self) -> StaticRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def list_entries(
        self, *, enabled_only: bool = False
    ) -> tuple[tuple[NodeEntry, ...], tuple[str, ...]]:
        return tuple(NodeEntry(spec=NodeSpec.from_node(n), node=n) for n in self._nodes), ()

    def list_nodes(self, *, enabled_only: bool = True) -> tuple[tuple[Node, ...], tuple[str, ...]]:
        return self._nodes, ()

    def _read_only(self, what: str) -> ConfigError:
        return ConfigError(
            f"{what} needs a database (registry.dsn or SKELETON_DATABASE_URL); without one"
            f" the nodes are the `nodes:` list of {self._source}: edit it there",
            key="registry.dsn",
        )

    def upsert_node(
        self,
        node: Node | NodeSpec,
        *,
        labels: Mapping[str, str] | None = None,
        capabilities: Mapping[str, Any] | None = None,
    ) -> bool:
        raise self._read_only("adding a node")

    def remove_node(self, node_id: str) -> bool:
        raise self._read_only("removing a node")

    def register_self(
        self, node: Node, *, capabilities: Mapping[str, Any] | None = None
    ) -> bool:
        raise self._read_only("registering a node")

    def approve(self, node_id: str) -> bool:
        raise self._read_only("approving a node")

    def issue_credentials(self, node_id: str) -> str:
        raise self._read_only("a node's own credentials")

    def set_enabled(self, node_id: str, enabled: bool) -> bool:
        raise self._read_only("enabling or disabling a node")

    def heartbeat(
        self,
        node_id: str,
        *,
        metrics: Mapping[str, Any],
        daemon_state: str = "running",
        code_version: str | None = None,
        daemon_pid: int | None = None,
        started_at: datetime | None = None,
    ) -> bool:
        raise self._read_only("a heartbeat")

    def mark_stopped(self, node_id: str) -> bool:
        raise self._read_only("marking a node stopped")

    def heartbeats(self, node_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {}  # no daemon reports anywhere without a database

    def metric_history(self, node_ids: Sequence[str], *, seconds: float,
                       points: int = 120) -> dict[str, tuple[MetricSample, ...]]:
        return {}  # no history without a database

    def record_status(self, node_id: str, status: Mapping[str, Any]) -> bool:
        return False

    def record_run(
        self,
        operation: str,
        arguments: Mapping[str, Any],
        selection: Sequence[str],
        who: str | None = None,
    ) -> int | None:
        return None  # nothing configured to record into: not a failure

    def record_node_results(self, run_id: int | None, result: ClusterResult[Any]) -> None:
        return None

    def list_runs(self, *, limit: int = 20) -> tuple[RunRecord, ...]:
        raise self._read_only("the run journal")

    def get_run(self, run_id: int) -> RunRecord | None:
        raise self._read_only("the run journal")

    def last_run(self, *, who: str | None = None) -> RunRecord | None:
        return None  # no journal: the app layer's local state file holds the last run
