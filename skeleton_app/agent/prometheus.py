"""The daemon's `GET /metrics`: the node's facts in the Prometheus text format.

Written by prometheus_client from a `CollectorRegistry` of the daemon's own (never the
process-wide default one, which an embedding program may fill), through one collector that
reads the node afresh on every scrape: load, CPUs, memory, the app dir's disk, per-GPU
utilisation and memory (nvidia-smi, as the heartbeat reads it), the daemon's start time and
code version, and the job attempts running there when the node has a jobs dir. GPU names
and uuids are the node's text: prometheus_client escapes label values, and they are clipped.

Served by health.py's server, under the same rules as /health's details: on a loopback
address, to anyone who can reach it; on any other, only with the daemon's bearer token
(401 otherwise).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from skeleton_app import __version__, gpu
from skeleton_app.agent.metrics import CpuMeter, gpu_report, read_meminfo
from skeleton_app.agent.running_jobs import jobs_running

MIB = 1 << 20
# The classic text format, which every Prometheus reads (prometheus_client >= 0.22 announces
# 1.0.0, for UTF-8 metric names; ours are all classic names, so the text is the same).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LABEL_LIMIT = 128  # characters of a node-supplied label value (a GPU's name or uuid)


@dataclass(frozen=True, slots=True)
class DaemonFacts:
    """What the collector reports about the daemon itself."""

    node_id: str
    app_dir: str
    started: float  # epoch seconds
    code_version: str


def _label(value: object) -> str:
    return "" if value is None else str(value)[:LABEL_LIMIT]


def _gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield GaugeMetricFamily(name, doc, value=value)


class NodeCollector(Collector):
    """Reads the node on each `collect()` (scrapes are serialised: one nvidia-smi at a time,
    and the CPU meter's window is the time since the previous scrape)."""

    def __init__(self, facts: DaemonFacts, *,
                 registry_state: Callable[[], str] = lambda: "unknown",
                 gpus: Callable[[], gpu.GpuReport] = gpu_report):
        self.facts = facts
        self._registry_state = registry_state
        self._gpus = gpus
        self._cpu = CpuMeter()  # its own: the heartbeat's meter keeps its own window
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._node()
            yield from self._gpu(self._gpus())
            yield from self._daemon()

    def _node(self) -> Iterator[Metric]:
        load = os.getloadavg()
        for minutes, value in zip((1, 5, 15), load, strict=True):
            yield GaugeMetricFamily(f"skeleton_node_load{minutes}",
                                    f"Load average over {minutes} minute(s).", value=value)
        yield from _gauge("skeleton_node_cpus", "CPUs this node has.",
                          float(os.cpu_count() or 0) or None)
        yield from _gauge("skeleton_node_cpu_busy_ratio",
                          "Fraction of all CPUs used since the previous scrape.",
                          self._cpu.busy())
        mem = read_meminfo()
        for key, name in (("MemTotal", "total"), ("MemAvailable", "available")):
            yield from _gauge(f"skeleton_node_memory_{name}_bytes", f"Memory {name} (bytes).",
                              float(mem[key]) if key in mem else None)
        with contextlib.suppress(OSError):
            app_dir = self.facts.app_dir
            usage = shutil.disk_usage(app_dir if os.path.isdir(app_dir) else "/")
            yield GaugeMetricFamily("skeleton_node_disk_total_bytes",
                                    "Size of the app dir's file system (bytes).",
                                    value=usage.total)
            yield GaugeMetricFamily("skeleton_node_disk_free_bytes",
                                    "Free space on the app dir's file system (bytes).",
                                    value=usage.free)

    def _gpu(self, report: gpu.GpuReport) -> Iterator[Metric]:
        state = GaugeMetricFamily("skeleton_node_gpu_report_state",
                                  "1 for what nvidia-smi answered: ok, none (no nvidia-smi)"
                                  " or error.", labels=["state"])
        for value in ("ok", "none", "error"):
            state.add_metric([value], 1.0 if report.state.value == value else 0.0)
        yield state
        labels = ["gpu", "uuid", "name"]
        util = GaugeMetricFamily("skeleton_node_gpu_utilization_ratio",
                                 "GPU utilisation (0..1).", labels=labels)
        used = GaugeMetricFamily("skeleton_node_gpu_memory_used_bytes",
                                 "GPU memory used (bytes).", labels=labels)
        total = GaugeMetricFamily("skeleton_node_gpu_memory_total_bytes",
                                  "GPU memory (bytes).", labels=labels)
        for g in report.gpus:
            values = [str(g.index), _label(g.uuid), _label(g.name)]
            if g.utilization_pct is not None:
                util.add_metric(values, g.utilization_pct / 100.0)
            if g.memory_used_mib is not None:
                used.add_metric(values, float(g.memory_used_mib * MIB))
            if g.memory_total_mib is not None:
                total.add_metric(values, float(g.memory_total_mib * MIB))
        yield from (util, used, total)

    def _daemon(self) -> Iterator[Metric]:
        facts = self.facts
        yield GaugeMetricFamily("skeleton_daemon_up", "1 while the daemon runs.", value=1)
        yield GaugeMetricFamily("skeleton_daemon_start_time_seconds",
                                "When the daemon started (epoch seconds).",
                                value=facts.started)
        yield GaugeMetricFamily("skeleton_daemon_uptime_seconds",
                                "Seconds since the daemon started.",
                                value=max(0.0, time.time() - facts.started))
        yield InfoMetricFamily("skeleton_daemon", "The daemon's node and code.", value={
            "node": _label(facts.node_id), "code_version": _label(facts.code_version),
            "skeleton_app": __version__})
        registry = GaugeMetricFamily("skeleton_daemon_registry_state",
                                     "1 for the registry's state as the daemon last saw it.",
                                     labels=["state"])
        now = self._registry_state()
        for value in ("unknown", "up", "down", "none", "refused"):
            registry.add_metric([value], 1.0 if now == value else 0.0)
        yield registry
        running = jobs_running(facts.app_dir)
        if running is not None:
            yield GaugeMetricFamily("skeleton_node_jobs_running",
                                    "Voice job attempts running on this node.", value=running)


def exposition(collector: Collector) -> Callable[[], tuple[bytes, str]]:
    """A function that renders `collector` in the text format (body, content type), from a
    registry of its own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return lambda: (generate_latest(registry), CONTENT_TYPE)
