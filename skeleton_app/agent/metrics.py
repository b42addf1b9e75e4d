"""The facts a daemon reports about its node: capabilities once at start (CPUs, memory,
GPUs), metrics with every heartbeat (load, memory, disk, GPUs), named like the status
probe's fields.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from skeleton_app import __version__, gpu

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
        "mem_total": mem.get("MemTotal"),
        "mem_available": mem.get("MemAvailable"),
        "gpu": _gpu_json(gpu_report()),
    }
    with contextlib.suppress(OSError):
        usage = shutil.disk_usage(app_dir if os.path.isdir(app_dir) else "/")
        out.update(disk_total=usage.total, disk_free=usage.free)
    return out
