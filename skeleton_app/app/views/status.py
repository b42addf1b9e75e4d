"""`cluster status` for people and scripts: the table (a row per node, unreachable nodes
included), its cells, and the JSON form with the registry's facts joined in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import IO, Any

from skeleton_app.app.views.common import format_duration, format_usage, table
from skeleton_app.gpu import GpuReport, GpuState, first_line
from skeleton_app.nodes import Node
from skeleton_app.ops.status import StatusReport, heartbeat_age, with_registry
from skeleton_app.ops.status_probe import NodeStatus
from skeleton_app.results import ClusterResult

COLUMNS = ["node", "host", "daemon", "load", "memory", "gpu", "disk"]
REGISTRY_COLUMNS = ["heartbeat", "version"]


def status_text(result: ClusterResult[StatusReport], nodes: Sequence[Node],
                registry: Mapping[str, Mapping[str, Any]] | None = None,
                stale_after: float = 30.0, *, file: IO[str] | None = None) -> None:
    """The status table on `file` (stdout by default)."""
    table(None, *rows(result, nodes, registry, stale_after), file=file)


def rows(result: ClusterResult[StatusReport], nodes: Sequence[Node],
         registry: Mapping[str, Mapping[str, Any]] | None = None,
         stale_after: float = 30.0) -> tuple[list[str], list[list[str]]]:
    """The status table: columns and one row per node (unreachable nodes are rows too)."""
    columns = COLUMNS + (REGISTRY_COLUMNS if registry is not None else [])
    body: list[list[str]] = []
    for node in nodes:
        r = result[node.id]
        st = r.outcome.status if r.error_kind is None and r.outcome is not None else None
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
        body.append(row)
    return columns, body


def status_json(result: ClusterResult[StatusReport],
                registry: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """`cluster status --json`: the result, each node's `data` holding its probed status and
    what the registry knows of it (heartbeat, code version; null without a registry)."""
    return with_registry(result, registry or {}).to_json()


# ---- cells ---------------------------------------------------------------------------------

# Marketing prefixes that make the GPU column wide without telling nodes apart.
_GPU_NAME_PREFIXES = ("NVIDIA ", "GeForce ", "Tesla ", "Quadro ")
_SMI_FAILED = "NVIDIA-SMI has failed because it "


def daemon_cell(status: NodeStatus) -> str:
    return {True: "✓", False: "✗", None: "?"}[status.daemon_running]


def load_cell(status: NodeStatus) -> str:
    if status.load is None:
        return "-"
    return " ".join(f"{value:.2f}" for value in status.load)


def mem_cell(status: NodeStatus) -> str:
    """Used/total memory, used meaning not available (MemTotal - MemAvailable)."""
    return format_usage(status.mem_used, status.mem_total)


def disk_cell(status: NodeStatus) -> str:
    """Used/total of the app dir's filesystem, used meaning not available to the app's user."""
    return format_usage(status.disk_used, status.disk_total)


def gpu_cell(report: GpuReport | None, *, width: int = 48) -> str:
    """'H200 0/140GiB 0% 38°C', '8×H200 12/1123GiB 34% 45°C', '-' (no GPU), 'err: ...', '?'."""
    if report is None:
        return "?"
    if report.state is GpuState.NONE or (report.state is GpuState.OK and not report.gpus):
        return "-"
    if report.state is GpuState.ERROR:
        return _truncate("err: " + _short_error(report.error or ""), width)
    gpus = report.gpus
    names = list(dict.fromkeys(_short_gpu_name(gpu.name) for gpu in gpus))
    parts = [("" if len(gpus) == 1 else f"{len(gpus)}×") + "+".join(names)]
    totals = [gpu.memory_total_mib for gpu in gpus]
    if all(total is not None for total in totals):
        used = [gpu.memory_used_mib for gpu in gpus]
        used_sum = None if any(u is None for u in used) else sum(u or 0 for u in used)
        parts.append(format_usage(_mib(used_sum), _mib(sum(t or 0 for t in totals))))
    utils = [gpu.utilization_pct for gpu in gpus if gpu.utilization_pct is not None]
    if utils:
        parts.append(f"{round(sum(utils) / len(utils))}%")
    temps = [gpu.temperature_c for gpu in gpus if gpu.temperature_c is not None]
    if temps:
        parts.append(f"{max(temps)}°C")
    return _truncate(" ".join(parts), width)


def _mib(mib: int | None) -> int | None:
    return None if mib is None else mib * 1024 * 1024


def _short_gpu_name(name: str | None) -> str:
    if not name:
        return "GPU"
    for prefix in _GPU_NAME_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix) :]
    return name


def _short_error(message: str) -> str:
    # "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure
    # that the latest NVIDIA driver is installed and running." -> its first clause.
    text = first_line(message)
    if text.startswith(_SMI_FAILED):
        text = text[len(_SMI_FAILED) :]
    head, sep, _rest = text.partition(". ")
    return head if sep else text.rstrip(".")


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"
