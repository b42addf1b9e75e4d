"""The `Registry` protocol: where cluster commands find their nodes and where runs go.

Two implementations: `PostgresRegistry` (registry.postgres) and `StaticRegistry`
(registry.static, config.yaml's `nodes:` list); `open_registry` picks one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from skeleton_app.nodes import Node
from skeleton_app.registry.records import NodeEntry, NodeSpec, RunRecord

if TYPE_CHECKING:
    from skeleton_app.registry.metrics_history import MetricSample
    from skeleton_app.results import ClusterResult


class Registry(Protocol):
    """Where nodes come from and where runs go. See PostgresRegistry for the semantics."""

    @property
    def source(self) -> str:
        """Human-readable origin: `postgresql HOST:PORT/DB` or `config.yaml nodes:`."""
        ...

    def list_nodes(self, *, enabled_only: bool = True) -> tuple[tuple[Node, ...], tuple[str, ...]]:
        ...

    def list_entries(
        self, *, enabled_only: bool = False
    ) -> tuple[tuple[NodeEntry, ...], tuple[str, ...]]:
        ...

    def upsert_node(
        self,
        node: Node | NodeSpec,
        *,
        labels: Mapping[str, str] | None = None,
        capabilities: Mapping[str, Any] | None = None,
    ) -> bool:
        ...

    def remove_node(self, node_id: str) -> bool:
        ...

    def register_self(
        self, node: Node, *, capabilities: Mapping[str, Any] | None = None
    ) -> bool:
        ...

    def approve(self, node_id: str) -> bool:
        ...

    def issue_credentials(self, node_id: str) -> str:
        ...

    def set_enabled(self, node_id: str, enabled: bool) -> bool:
        ...

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
        ...

    def mark_stopped(self, node_id: str) -> bool:
        ...

    def heartbeats(self, node_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        ...

    def metric_history(self, node_ids: Sequence[str], *, seconds: float,
                       points: int = 120) -> dict[str, tuple[MetricSample, ...]]:
        ...

    def record_status(self, node_id: str, status: Mapping[str, Any]) -> bool:
        ...

    def record_run(
        self,
        operation: str,
        arguments: Mapping[str, Any],
        selection: Sequence[str],
        who: str | None = None,
    ) -> int | None:
        ...

    def record_node_results(self, run_id: int | None, result: ClusterResult[Any]) -> None:
        ...

    def list_runs(self, *, limit: int = 20) -> tuple[RunRecord, ...]:
        ...

    def get_run(self, run_id: int) -> RunRecord | None:
        ...

    def last_run(self, *, who: str | None = None) -> RunRecord | None:
        ...

    def close(self) -> None:
        ...

    def __enter__(self) -> Registry:
        ...

    def __exit__(self, *exc: object) -> None:
        ...
