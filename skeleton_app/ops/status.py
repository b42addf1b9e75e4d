"""`cluster status`: one round trip per node, a small sh probe sent on stdin.

The probe (payloads/status.sh) reports daemon state, load, memory, GPUs, disk, uptime and
the deployed code version; nothing is left on the node. Each node's outcome is a
`StatusReport`. With a registry, the heartbeat age and code version the daemon reported are
joined in (`with_registry`), and the snapshot is written back (`registry_snapshot`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from skeleton_app import layout, payloads
from skeleton_app.cluster import Cluster
from skeleton_app.nodes import Node
from skeleton_app.ops.status_probe import SCRIPT_NAME, NodeStatus, parse_status, probe_args
from skeleton_app.results import ClusterResult, NodeResult

if TYPE_CHECKING:
    from skeleton_app.registry import Registry


@dataclass(frozen=True, slots=True)
class StatusReport:
    """One node's status: what the probe saw (None when it could not run) and, once joined
    in by `with_registry`, what the registry knows of the node (heartbeat, code version)."""

    status: NodeStatus | None = None
    registry: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status.as_dict() if self.status is not None else None,
                "registry": dict(self.registry) if self.registry is not None else None}


def probe_invocation(cluster: Cluster, node: Node) -> tuple[str, bytes]:
    """(command, stdin) that probe `node`."""
    daemon = cluster.settings.daemon
    args = probe_args(node.app_dir, manager=daemon.manager, pid_file=layout.pid_file(node),
                      lock_file=layout.lock_file(node), unit=daemon.unit,
                      user_unit=daemon.user_unit)
    return payloads.invocation(SCRIPT_NAME, *args)


def status(cluster: Cluster, nodes: Sequence[Node], *, timeout: float | None = 30.0,
           fanout: int | None = None) -> ClusterResult[StatusReport]:
    """Probe every node; each NodeResult that ran carries a `StatusReport` as its outcome."""
    from skeleton_app.ssh.runner import RunOptions

    connector = cluster.connector

    def one(node: Node) -> NodeResult[StatusReport]:
        command, script = probe_invocation(cluster, node)
        r = connector.run(node, command, RunOptions(timeout=timeout, stdin=script))
        if r.error_kind is not None:
            return r
        # The probe always exits 0; a non-zero exit means sh itself could not run it.
        return replace(r, outcome=StatusReport(status=parse_status(r.stdout)))

    return cluster.map(one, nodes, fanout=fanout, operation="status")


def with_registry(result: ClusterResult[StatusReport],
                  registry: Mapping[str, Mapping[str, Any]] | None
                  ) -> ClusterResult[StatusReport]:
    """`result` with each node's registry facts joined into its StatusReport (every node gets
    one, unreachable nodes included, so the JSON has the same keys for all)."""
    if registry is None:
        return result
    joined = []
    for node_id, r in result.items():
        report = r.outcome or StatusReport()
        joined.append(replace(r, outcome=replace(report, registry=registry.get(node_id))))
    return ClusterResult(joined, operation=result.operation, duration=result.duration,
                         warnings=result.warnings)


def heartbeat_age(last_seen: float | None, now: float | None = None) -> float | None:
    if last_seen is None:
        return None
    return max(0.0, (now or time.time()) - last_seen)


def registry_snapshot(cluster: Cluster, result: ClusterResult[StatusReport],
                      registry: Registry | None = None) -> dict[str, dict[str, Any]] | None:
    """With a registry: write the snapshot back and return heartbeat facts per node, over
    `registry` (the command's open connection) or one opened and closed here.

    None without a registry. A registry that fails here only costs those columns: the
    nodes were already probed, so the status still prints.
    """
    if not cluster.settings.registry.dsn:
        return None
    from skeleton_app.errors import RegistryError
    from skeleton_app.registry import open_registry

    own = registry is None
    try:
        registry = registry or open_registry(cluster.settings)
    except RegistryError:
        return {}
    try:
        facts = registry.heartbeats([*result])
        for node_id, report in result.outcomes().items():
            if report.status is not None:
                registry.record_status(node_id, report.status.as_dict())
        return facts
    except RegistryError:
        return {}
    finally:
        if own:
            registry.close()
