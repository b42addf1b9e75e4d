"""The facts a daemon reports about its node: capabilities once at start (CPUs, memory,
GPUs), metrics with every heartbeat (load, CPU use, memory, disk, GPUs), named like the
status probe's fields.

`cpu_busy` (0..1, a fraction of all CPUs) is what routing scores CPU by, not the load
average: /proc/loadavg is host-wide, so nodes that are namespaces of one machine (the
testbed) all show the same numbers, and it lags by about a minute. `cpu_busy` is the CPU time
the processes visible in /proc used over the last interval: on a real machine (the initial
pid namespace) that is the whole machine; in a pid namespace, that namespace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skeleton_app import __version__, gpu
from skeleton_app.agent.running_jobs import jobs_running

GPU_TIMEOUT = 10.0  # nvidia-smi can hang on a wedged driver


def read_meminfo() -> dict[str, int]:
    """MemTotal and MemAvailable in bytes (empty when /proc/meminfo is unreadable)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                out[key] = int(rest.split()[0]) * 1024
    return out


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU ticks used so far by what /proc shows, and when they were read."""

    ticks: int
    at: float  # time.monotonic()


def _stat_ticks(text: str) -> int:
    """utime + stime + cutime + cstime of one /proc/PID/stat line (0 when unreadable). The
    command name (field 2) may hold spaces and ')': count fields after the last ')'."""
    fields = text[text.rfind(")") + 1:].split()
    # After the name, field 3 (state) is fields[0]: utime..cstime are fields 14..17.
    try:
        return sum(max(0, int(v)) for v in fields[11:15]) if len(fields) >= 15 else 0
    except ValueError:
        return 0


def cpu_sample(proc: str = "/proc") -> CpuSample:
    """Sum the CPU ticks of every process in `proc`. A process's children's ticks join its
    own (cutime, cstime) when it reaps them, so CPU used by a short-lived process that ended
    between two samples is still counted (in its parent), and a process that ended is
    subtracted only with what its parent then gains: the difference of two sums is the CPU
    used in between."""
    total = 0
    try:
        entries = os.listdir(proc)
    except OSError:
        entries = []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(proc, name, "stat"), encoding="ascii",
                      errors="replace") as f:
                total += _stat_ticks(f.read())
        except OSError:
            continue  # it ended while we looked
    return CpuSample(ticks=total, at=time.monotonic())


def _clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK")) or 100
    except (OSError, ValueError):
        return 100


def busy_between(before: CpuSample, after: CpuSample, cpus: int | None = None,
                 hz: int | None = None) -> float | None:
    """The fraction (0..1) of all CPUs used between two samples; None when no time passed.
    A process whose parent never collects its ticks (SIGCHLD ignored, or a parent outside
    the namespace) takes its ticks away when it ends: the difference can go negative, and
    is counted as 0 then."""
    seconds = after.at - before.at
    if seconds <= 0:
        return None
    used = (after.ticks - before.ticks) / (hz or _clock_ticks())
    return min(1.0, max(0.0, used / seconds / max(1, cpus or os.cpu_count() or 1)))


class CpuMeter:
    """`cpu_busy` over the interval since its previous reading (each heartbeat). The first
    reading measures a short window, so the first heartbeat has a value too."""

    FIRST_WINDOW = 0.25  # seconds

    def __init__(self, proc: str = "/proc"):
        self.proc = proc
        self._last: CpuSample | None = None
        self._lock = threading.Lock()

    def busy(self) -> float | None:
        with self._lock:
            if self._last is None:
                self._last = cpu_sample(self.proc)
                time.sleep(self.FIRST_WINDOW)
            now = cpu_sample(self.proc)
            value = busy_between(self._last, now)
            self._last = now
            return None if value is None else round(value, 4)


_CPU = CpuMeter()


def gpu_report() -> gpu.GpuReport:
    """nvidia-smi's view of the GPUs (the same query and parser as the status probe)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return gpu.GpuReport.missing()
    try:
        proc = subprocess.run([exe, *gpu.QUERY_ARGS], capture_output=True, text=True,
                              timeout=GPU_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return gpu.GpuReport.failed(f"nvidia-smi did not answer within {GPU_TIMEOUT:g}s")
    except OSError as exc:
        return gpu.GpuReport.failed(f"cannot run nvidia-smi: {exc.strerror}")
    return gpu.report_from_command(proc.returncode, proc.stdout or proc.stderr)


def _gpu_json(report: gpu.GpuReport) -> dict[str, Any]:
    return {
        "state": report.state.value,
        "gpus": [dataclasses.asdict(g) for g in report.gpus],
        "error": report.error,
    }


def capabilities(report: gpu.GpuReport | None = None) -> dict[str, Any]:
    """What the node can do, registered once at start."""
    report = report or gpu_report()
    mem = read_meminfo()
    return {
        "cpu_count": os.cpu_count(),
        "mem_total": mem.get("MemTotal"),
        "gpus": [{"name": g.name, "memory_total_mib": g.memory_total_mib, "uuid": g.uuid}
                 for g in report.gpus],
        "gpu_state": report.state.value,
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "skeleton_app": __version__,
    }


def metrics(app_dir: str) -> dict[str, Any]:
    """One heartbeat's worth of facts, named like the status probe's fields."""
    mem = read_meminfo()
    out: dict[str, Any] = {
        "load": list(os.getloadavg()),
        "cpu_busy": _CPU.busy(),
        "mem_total": mem.get("MemTotal"),
        "mem_available": mem.get("MemAvailable"),
        "gpu": _gpu_json(gpu_report()),
    }
    with contextlib.suppress(OSError):
        usage = shutil.disk_usage(app_dir if os.path.isdir(app_dir) else "/")
        out.update(disk_total=usage.total, disk_free=usage.free)
    running = jobs_running(app_dir)
    if running is not None:  # a node without a jobs dir never ran a job: no such field
        out["jobs_running"] = running
    return out
