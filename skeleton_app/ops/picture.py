"""The cluster picture: one typed row per selected node (daemon state, heartbeat age, the
latest load/CPU/memory/disk/GPU values, their history for sparklines, running jobs, code
version), what `skeleton cluster top` draws and `skeleton web` serves.

Two sources, one shape:

    registry_picture(registry, nodes)      no SSH: the nodes' rows (the latest heartbeat),
                                           `metric_history` (the last minutes, bucketed) and,
                                           when the queue is there, the running jobs
    probe_picture(cluster, nodes)          no registry (config.yaml's `nodes:`): one status
                                           probe per node, bounded by `timeout`

Every number goes through `metrics_history.sample_values`, the check the history is written
with: a node's heartbeat is untrusted input, and anything that is not a finite number in a
sane range becomes None here, never a string or a NaN in a view. A registry that fails is not
an exception for the caller of `registry_picture`: the picture says so (`problem`), so a live
view keeps drawing and retries.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from skeleton_app.errors import RegistryError
from skeleton_app.nodes import Node
from skeleton_app.registry.metrics_history import MetricSample, sample_values

if TYPE_CHECKING:
    from skeleton_app.cluster import Cluster
    from skeleton_app.registry import Registry
    from skeleton_app.registry.job_records import JobStore
    from skeleton_app.registry.records import NodeEntry

HISTORY_SECONDS = 600.0  # the sparklines' window: the last 10 minutes
# Buckets of 5 s: a fresh node's sparkline grows a bar every 5 s (a view merges buckets to
# fit its width once there are more of them than it has cells).
HISTORY_POINTS = 120
MAX_ERROR = 200  # characters of a node's or the registry's error kept in a picture

# The running jobs per node id; None when there is no queue to ask (or it cannot be read).
JobsCounter = Callable[[], Mapping[str, int] | None]


@dataclass(frozen=True, slots=True)
class NodePicture:
    """One node: what its daemon last reported (or the probe saw) and its recent history.
    None anywhere means "not known"; `error` says why a node has no values at all."""

    id: str
    host: str
    daemon: str | None = None  # starting | running | stopping | stopped (or None: unknown)
    heartbeat_age: float | None = None  # seconds; None: no heartbeat (or no registry)
    stale: bool = False  # no heartbeat within registry.stale_after
    latest: MetricSample | None = None
    history: tuple[MetricSample, ...] = ()  # oldest first
    jobs_running: int | None = None
    code_version: str | None = None
    error: str | None = None

    @property
    def load_history(self) -> tuple[float | None, ...]:
        return tuple(s.load1 for s in self.history)

    @property
    def mem_history(self) -> tuple[float | None, ...]:
        return tuple(s.mem_used_fraction for s in self.history)

    @property
    def gpu_util(self) -> float | None:
        """The mean utilisation (percent) of the node's GPUs that report one."""
        values = [v for v in (self.latest.gpu_util if self.latest else ()) if v is not None]
        return sum(values) / len(values) if values else None

    @property
    def gpu_mem_fraction(self) -> float | None:
        """Used / total memory over the node's GPUs that report both."""
        if self.latest is None:
            return None
        pairs = [(u, t) for u, t in zip(self.latest.gpu_mem_used, self.latest.gpu_mem_total,
                                        strict=False) if u is not None and t]
        total = sum(t for _, t in pairs)
        return min(1.0, sum(u for u, _ in pairs) / total) if total else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "host": self.host, "daemon": self.daemon,
            "heartbeat_age": self.heartbeat_age, "stale": self.stale,
            "latest": _sample_dict(self.latest) if self.latest else None,
            "history": [_sample_dict(s) for s in self.history],
            "jobs_running": self.jobs_running, "code_version": self.code_version,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class ClusterPicture:
    """Every selected node at one moment, from one source (`registry` or `probe`).
    `problem`: why the picture is incomplete (the registry is down); the rows are then the
    last ones known, or the bare nodes."""

    at: float  # epoch seconds
    source: str
    nodes: tuple[NodePicture, ...]
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "source": self.source, "problem": self.problem,
                "nodes": [n.as_dict() for n in self.nodes]}


def _sample_dict(sample: MetricSample) -> dict[str, Any]:
    data = dataclasses.asdict(sample)
    data["mem_used_fraction"] = sample.mem_used_fraction
    data["disk_used_fraction"] = sample.disk_used_fraction
    return data


def sample_of(metrics: Mapping[str, Any], at: float) -> MetricSample:
    """A heartbeat's metrics dict (or a probe's, in the same shape) as a checked sample.
    A dict the check itself cannot read (an integer too large for a float: JSON allows it)
    is an empty sample: one node's row never stops the view."""
    try:
        values = sample_values(metrics)
    except (OverflowError, TypeError, ValueError, KeyError, IndexError):
        return MetricSample(at=at)
    return MetricSample(
        at=at, load1=values["load1"], cpu_busy=values["cpu_busy"],
        mem_total=values["mem_total"], mem_available=values["mem_available"],
        disk_total=values["disk_total"], disk_free=values["disk_free"],
        gpu_util=tuple(values["gpu_util"]), gpu_mem_used=tuple(values["gpu_mem_used"]),
        gpu_mem_total=tuple(values["gpu_mem_total"]), jobs_running=values["jobs_running"])


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


def bare_picture(nodes: Sequence[Node], *, source: str, problem: str | None,
                 now: float | None = None) -> ClusterPicture:
    """The nodes with no values at all (nothing could be read yet)."""
    return ClusterPicture(at=now or time.time(), source=source,
                          nodes=tuple(NodePicture(id=n.id, host=n.host) for n in nodes),
                          problem=_short(problem) if problem else None)


def registry_picture(registry: Registry, nodes: Sequence[Node], *,
                     stale_after: float = 30.0, jobs: JobsCounter | None = None,
                     seconds: float = HISTORY_SECONDS, points: int = HISTORY_POINTS,
                     now: float | None = None) -> ClusterPicture:
    """The picture from the registry alone: two queries (the rows, the history) and the
    jobs count. A RegistryError becomes the picture's `problem` with the bare nodes."""
    now = now or time.time()
    ids = [n.id for n in nodes]
    try:
        entries, _warnings = registry.list_entries()
        history = registry.metric_history(ids, seconds=seconds, points=points)
    except RegistryError as exc:
        return bare_picture(nodes, source="registry", now=now,
                            problem=f"registry down, retrying: {exc}")
    by_id = {e.node.id: e for e in entries}
    running = jobs() if jobs is not None else None
    step = max(1.0, seconds / points)  # metric_history's bucket width
    rows = tuple(_registry_row(node, by_id.get(node.id),
                               with_gaps(history.get(node.id, ()), step, now, points),
                               running, stale_after, now) for node in nodes)
    return ClusterPicture(at=now, source="registry", nodes=rows)


def with_gaps(samples: Sequence[MetricSample], step: float, now: float,
              most: int) -> tuple[MetricSample, ...]:
    """`samples` (buckets with data only) with an empty sample for each bucket without a
    heartbeat, up to `now`: a daemon that stopped shows as a gap in its sparkline, not as
    the last minutes squeezed together. One empty bucket alone is not a gap: at the default
    heartbeat interval (5 s, the bucket's width) jitter leaves one empty now and then. At
    most `most` samples, the newest."""
    out: list[MetricSample] = []

    def empty_buckets(missing: int) -> None:
        if missing < 2:
            return
        last = out[-1].at
        out.extend(MetricSample(at=last + step * (i + 1)) for i in range(min(most, missing)))

    for sample in samples:
        if out:
            empty_buckets(round((sample.at - out[-1].at) / step) - 1)
        out.append(sample)
    if out:  # the buckets since the last heartbeat, the current one not counted
        empty_buckets(int((now - out[-1].at) / step) - 1)
    return tuple(out[-most:])


def _registry_row(node: Node, entry: NodeEntry | None, history: tuple[MetricSample, ...],
                  running: Mapping[str, int] | None, stale_after: float,
                  now: float) -> NodePicture:
    if entry is None:  # removed meanwhile, or a row that failed validation
        return NodePicture(id=node.id, host=node.host, history=history,
                           error="no valid registry row")
    age = entry.seen_ago
    latest = None
    if entry.metrics and age is not None:
        latest = sample_of(entry.metrics, now - age)
    jobs = running.get(node.id, 0) if running is not None else (
        latest.jobs_running if latest is not None else None)
    return NodePicture(id=node.id, host=node.host, daemon=entry.daemon_state,
                       heartbeat_age=age, stale=entry.is_stale(stale_after), latest=latest,
                       history=history, jobs_running=jobs, code_version=entry.code_version)


def queue_counter(open_store: Callable[[], JobStore]) -> JobsCounter:
    """A `JobsCounter` over the jobs queue (`open_store()` -> a JobStore, opened on first
    use and kept). The queue is the operator's: a database without it, or a role that may
    not read it, gives None (the jobs column falls back to the heartbeat's count)."""
    store: list[JobStore] = []

    def count() -> Mapping[str, int] | None:
        try:
            if not store:
                store.append(open_store())
            running = store[0].list(states=["running"], limit=10_000)
        except (RegistryError, OSError):
            return None
        out: dict[str, int] = {}
        for job in running:
            if job.node:
                out[job.node] = out.get(job.node, 0) + 1
        return out

    return count


def probe_picture(cluster: Cluster, nodes: Sequence[Node], *, timeout: float = 10.0,
                  previous: ClusterPicture | None = None, keep: int = HISTORY_POINTS,
                  now: float | None = None) -> ClusterPicture:
    """The picture from one status probe per node (no registry). The history is what this
    process probed before (`previous`), at most `keep` samples per node."""
    from skeleton_app.ops.status import status

    now = now or time.time()
    result = status(cluster, nodes, timeout=timeout)
    before = {n.id: n.history for n in previous.nodes} if previous else {}
    rows: list[NodePicture] = []
    for node in nodes:
        r = result[node.id]
        st = r.outcome.status if r.error_kind is None and r.outcome is not None else None
        if st is None:
            rows.append(NodePicture(id=node.id, host=node.host,
                                    history=before.get(node.id, ()),
                                    error=_short(r.summary() or "probe failed")))
            continue
        sample = sample_of(_probe_metrics(st.as_dict()), now)
        daemon = {True: "running", False: "stopped", None: None}[st.daemon_running]
        rows.append(NodePicture(id=node.id, host=node.host, daemon=daemon, latest=sample,
                                history=(*before.get(node.id, ()), sample)[-keep:],
                                code_version=st.code_version))
    return ClusterPicture(at=now, source="probe", nodes=tuple(rows))


def _probe_metrics(status: Mapping[str, Any]) -> dict[str, Any]:
    """A status probe's fields in a heartbeat's shape (`agent.metrics.metrics`)."""
    gpu = status.get("gpu")
    return {
        "load": status.get("load"),
        "mem_total": status.get("mem_total"), "mem_available": status.get("mem_available"),
        "disk_total": status.get("disk_total"), "disk_free": status.get("disk_free"),
        "gpu": {"gpus": list(gpu.get("gpus") or [])} if isinstance(gpu, Mapping) else None,
    }
