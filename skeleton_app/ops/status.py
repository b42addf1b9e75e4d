"""`cluster status`: one round trip per node, a small sh probe sent on stdin.

The probe (payloads/status.sh) reports daemon state, load, memory, GPUs, disk, uptime and
the deployed code version; nothing is left on the node. With a registry, the heartbeat
age and code version the daemon reported are joined in, and the snapshot is written back.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from skeleton_app import layout
from skeleton_app.cluster import Cluster
from skeleton_app.nodes import Node
from skeleton_app.ops.status_probe import NodeStatus, parse_status, probe_args, probe_script
from skeleton_app.results import ClusterResult, NodeResult

if TYPE_CHECKING:
    from skeleton_app.registry import Registry


def probe_command(cluster: Cluster, node: Node) -> str:
    daemon = cluster.settings.daemon
    args = probe_args(node.app_dir, manager=daemon.manager, pid_file=layout.pid_file(node),
                      lock_file=layout.lock_file(node), unit=daemon.unit,
                      user_unit=daemon.user_unit)
    return "sh -s -- " + shlex.join(args)


def status(cluster: Cluster, nodes: Sequence[Node], *, timeout: float | None = 30.0,
           fanout: int | None = None) -> ClusterResult[Any]:
    """Probe every node; each NodeResult carries `data["status"]` (a NodeStatus) when it ran."""
    from skeleton_app.ssh.runner import RunOptions

    script = probe_script().encode()
    connector = cluster.connector

    def one(node: Node) -> NodeResult[Any]:
        r = connector.run(node, probe_command(cluster, node),
                          RunOptions(timeout=timeout, stdin=script))
        if r.error_kind is not None:
            return r
        parsed = parse_status(r.stdout)
        # The probe always exits 0; a non-zero exit means sh itself could not run it.
        return dataclasses.replace(r, data={"status": parsed})

    return cluster.map(one, nodes, fanout=fanout, operation="status")


def heartbeat_age(last_seen: float | None, now: float | None = None) -> float | None:
    if last_seen is None:
        return None
    return max(0.0, (now or time.time()) - last_seen)


def rows(result: ClusterResult[Any], nodes: Sequence[Node],
         registry: Mapping[str, Mapping[str, Any]] | None = None,
         stale_after: float = 30.0) -> tuple[list[str], list[list[str]]]:
    """The status table: columns and one row per node (unreachable nodes are rows too)."""
    from skeleton_app.ops.status_probe import (
        daemon_cell,
        disk_cell,
        format_duration,
        gpu_cell,
        load_cell,
        mem_cell,
    )

    columns = ["node", "host", "daemon", "load", "memory", "gpu", "disk"]
    if registry is not None:
        columns += ["heartbeat", "version"]
    table: list[list[str]] = []
    for node in nodes:
        r = result[node.id]
        st: NodeStatus | None = r.data.get("status") if r.error_kind is None else None
        if st is None:
            reason = r.summary() if r.error_kind is not None else f"probe failed: {r.summary()}"
            row = [node.id, node.host, "✗", reason, "", "", ""]
        else:
            row = [node.id, node.host, daemon_cell(st), load_cell(st), mem_cell(st),
                   gpu_cell(st.gpu), disk_cell(st)]
        if registry is not None:
            reg = registry.get(node.id, {})
            age = heartbeat_age(reg.get("last_seen"))
            beat = "-" if age is None else format_duration(age) + " ago"
            if age is not None and age > stale_after:
                beat += " (stale)"
            version = (st.code_version if st and st.code_version else None) or reg.get(
                "code_version") or "-"
            row += [beat, str(version)[:12]]
        table.append(row)
    return columns, table


def registry_snapshot(cluster: Cluster, result: ClusterResult[Any],
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
        for node_id, r in result.items():
            st = r.data.get("status")
            if st is not None:
                registry.record_status(node_id, st.as_dict())
        return facts
    except RegistryError:
        return {}
    finally:
        if own:
            registry.close()
