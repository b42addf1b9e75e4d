"""What the web page reads, as JSON-ready dicts: `WebApi` over one registry connection, the
jobs queue and the log tail.

    nodes()    every registered node: its latest heartbeat (checked like the history's
               values: hostile numbers become null), daemon state, heartbeat age; and the
               registry's state (up / down with the error / none)
    history()  each node's heartbeats over 1 h / 24 h / 7 d as columns (`registry.
               metric_history`): time, load, memory fraction, GPU utilisation and memory
    runs()     the last runs of the journal, keyed as `runs list --json`
    jobs()     the newest jobs of the queue (`jobs list --json`), when there is a queue
    logs()     the log pane's lines after a cursor, by node and level

The registry may go down and come back at any time: every read catches the RegistryError,
says so in its answer (`registry: {"state": "down", "error": ...}`) and the next read tries
again (PostgresSession reconnects), at most every `RETRY_DOWN` seconds while it is down.
Node text (daemon state, code version, GPU names, log lines) is data, never markup: the page
sets it as textContent, and `dumps` escapes `<`, `>` and `&` as well.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from skeleton_app.app.views.common import sanitize
from skeleton_app.app.views.runs import run_dict
from skeleton_app.errors import SkeletonError
from skeleton_app.registry.metrics_history import MetricSample, sample_values
from skeleton_app.web.logtail import LEVELS, LogTail

if TYPE_CHECKING:
    from skeleton_app.config import Settings
    from skeleton_app.nodes import Node
    from skeleton_app.registry import NodeEntry, Registry, RunRecord
    from skeleton_app.registry.job_records import Job, JobStore

T = TypeVar("T")

RANGES = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
POINTS = 240  # buckets per chart: 15 s (1 h), 6 min (24 h), 42 min (7 d)
RETRY_DOWN = 2.0  # seconds between two attempts while the registry is down
RUNS = 20
JOBS = 50
MAX_TEXT = 200


def dumps(data: object) -> bytes:
    """JSON for the page: ASCII only, and no `<`, `>`, `&` even inside strings (a browser
    that sniffs a response as HTML finds no tag in it)."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .encode())


def _text(value: object) -> str | None:
    """Untrusted text for display: a string, control characters made visible, cut."""
    return sanitize(value)[:MAX_TEXT] if isinstance(value, str) else None


class Source:
    """One registry-backed source's state: up / down (with the error text) / none, and the
    back-off while it is down. Thread-safe."""

    def __init__(self, configured: bool):
        self.state = "up" if configured else "none"
        self.error: str | None = None
        self._failed_at = 0.0
        self._lock = threading.Lock()

    def read(self, fn: Callable[[], T], fallback: T) -> T:
        with self._lock:
            if self.state == "down" and time.monotonic() - self._failed_at < RETRY_DOWN:
                return fallback
        try:
            value = fn()
        except SkeletonError as exc:
            with self._lock:
                self.state, self.error = "down", sanitize(str(exc))[:500]
                self._failed_at = time.monotonic()
            return fallback
        with self._lock:
            self.state, self.error = "up", None
        return value

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"state": self.state, "error": self.error}


class WebApi:
    """The page's data. `registry` None: no registry configured (the config's nodes, no
    heartbeats, no history, no journal); `jobs` None: no jobs queue."""

    def __init__(self, settings: Settings, registry: Registry | None, tail: LogTail, *,
                 jobs: JobStore | None = None):
        self.settings = settings
        self.registry = registry
        self.tail = tail
        self.jobs_store = jobs
        self.source = Source(registry is not None)
        self.jobs_source = Source(jobs is not None)
        self._entries: tuple[NodeEntry, ...] = ()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the nodes

    def list_nodes(self) -> Sequence[Node]:
        """The nodes to follow the logs of (the log follower's list): the enabled ones.
        RegistryError when the registry is down (the follower asks again later)."""
        if self.registry is None:
            return self.settings.nodes
        nodes, _warnings = self.registry.list_nodes(enabled_only=True)
        return nodes

    def _read_entries(self) -> tuple[NodeEntry, ...]:
        assert self.registry is not None
        entries, _warnings = self.registry.list_entries(enabled_only=False)
        with self._lock:
            self._entries = entries
        return entries

    def nodes(self) -> dict[str, Any]:
        stale_after = self.settings.registry.stale_after
        rows: list[dict[str, Any]]
        if self.registry is None:
            rows = [_static_row(n) for n in self.settings.nodes]
        else:
            with self._lock:
                last = self._entries  # what was read before the registry went down
            entries = self.source.read(self._read_entries, last)
            rows = [_entry_row(e, stale_after) for e in entries]
        states = self.tail.states()
        for row in rows:
            row["logs"] = states.get(row["id"])
        return {"registry": self.source.as_dict(), "stale_after": stale_after, "nodes": rows,
                "now": time.time()}

    # ------------------------------------------------------------------ the history

    def history(self, range_name: str, node: str | None = None) -> dict[str, Any] | None:
        """Every node's (or `node`'s) history over `range_name` (1h, 24h, 7d); None for
        another range."""
        seconds = RANGES.get(range_name)
        if seconds is None:
            return None
        found: dict[str, tuple[MetricSample, ...]] = {}
        if self.registry is not None:
            registry = self.registry
            with self._lock:
                ids = [e.node.id for e in self._entries]
            if not ids:
                none: tuple[NodeEntry, ...] = ()
                ids = [e.node.id for e in self.source.read(self._read_entries, none)]
            if node is not None:
                ids = [i for i in ids if i == node]
            found = self.source.read(
                lambda: registry.metric_history(ids, seconds=seconds, points=POINTS), {})
        return {"registry": self.source.as_dict(), "range": range_name, "seconds": seconds,
                "now": time.time(),
                "nodes": {node: _columns(samples) for node, samples in found.items()}}

    # ------------------------------------------------------------------ journal and queue

    def runs(self) -> dict[str, Any]:
        registry = self.registry
        records: tuple[RunRecord, ...] = ()
        if registry is not None:
            records = self.source.read(lambda: registry.list_runs(limit=RUNS), records)
        return {"registry": self.source.as_dict(), "runs": [run_dict(r) for r in records]}

    def jobs(self) -> dict[str, Any]:
        store = self.jobs_store
        jobs: tuple[Job, ...] = ()
        if store is not None:
            jobs = self.jobs_source.read(lambda: store.list(states=(), limit=JOBS), jobs)
        return {"queue": self.jobs_source.as_dict(), "jobs": [j.as_dict() for j in jobs]}

    # ------------------------------------------------------------------ the log pane

    def logs(self, after: int, *, node: str | None, level: str | None) -> dict[str, Any]:
        lines, newest, dropped = self.tail.after(after, node=node, level=level)
        return {"lines": [ln.as_dict() for ln in lines], "next": newest, "dropped": dropped,
                "levels": list(LEVELS), "followers": self.tail.states()}


def _static_row(node: Node) -> dict[str, Any]:
    return {"id": node.id, "host": node.host, "roles": list(node.roles), "state": "enabled",
            "daemon_state": None, "seen_ago": None, "stale": None, "code_version": None,
            "daemon_pid": None, **_metrics_row({})}


def _entry_row(entry: NodeEntry, stale_after: float) -> dict[str, Any]:
    return {"id": entry.node.id, "host": entry.node.host, "roles": list(entry.node.roles),
            "state": entry.state, "daemon_state": entry.daemon_state,
            "seen_ago": entry.seen_ago, "stale": entry.is_stale(stale_after),
            "code_version": _text(entry.code_version), "daemon_pid": entry.daemon_pid,
            **_metrics_row(entry.metrics)}


def _metrics_row(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The latest heartbeat through the history's checks (finite numbers in sane ranges,
    anything else null), plus the GPUs' names as text."""
    v = sample_values(metrics)
    sample = MetricSample(
        at=0.0, load1=v["load1"], cpu_busy=v["cpu_busy"], mem_total=v["mem_total"],
        mem_available=v["mem_available"], disk_total=v["disk_total"],
        disk_free=v["disk_free"], gpu_util=tuple(v["gpu_util"]),
        gpu_mem_used=tuple(v["gpu_mem_used"]), gpu_mem_total=tuple(v["gpu_mem_total"]),
        jobs_running=v["jobs_running"])
    gpu = metrics.get("gpu")
    listed = gpu.get("gpus") if isinstance(gpu, Mapping) else None
    names = [_text(g.get("name")) if isinstance(g, Mapping) else None
             for g in (listed if isinstance(listed, list) else [])][:len(sample.gpu_util)]
    return {"load1": sample.load1, "cpu_busy": sample.cpu_busy, "mem_total": sample.mem_total,
            "mem_used": sample.mem_used_fraction, "disk_total": sample.disk_total,
            "disk_used": sample.disk_used_fraction, "jobs_running": sample.jobs_running,
            "gpus": [{"name": names[i] if i < len(names) else None, "util": util,
                      "mem_used_mib": sample.gpu_mem_used[i],
                      "mem_total_mib": sample.gpu_mem_total[i]}
                     for i, util in enumerate(sample.gpu_util)]}


def _columns(samples: Sequence[MetricSample]) -> dict[str, Any]:
    """uPlot's shape: one list per series, aligned on `t` (epoch seconds). GPU series are the
    average over the node's GPUs (utilisation in percent, memory as a fraction)."""
    def mean(values: Sequence[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    def gpu_mem(s: MetricSample) -> float | None:
        fractions = [used / total for used, total in zip(s.gpu_mem_used, s.gpu_mem_total,
                                                         strict=False)
                     if used is not None and total]
        return mean(fractions)

    return {"t": [s.at for s in samples], "load1": [s.load1 for s in samples],
            "mem_used": [s.mem_used_fraction for s in samples],
            "gpu_util": [mean(s.gpu_util) for s in samples],
            "gpu_mem_used": [gpu_mem(s) for s in samples],
            "gpus": max((len(s.gpu_util) for s in samples), default=0)}
