"""The heartbeat's `cpu_busy`: the fraction of all CPUs that the processes in /proc used over
the last interval (routing scores CPU by it: /proc/loadavg is the same in every namespace of
a machine). Real processes burn real CPU here; a made-up /proc checks the parsing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skeleton_app.agent.metrics import CpuMeter, CpuSample, busy_between, cpu_sample, metrics

# Burns `s` seconds of CPU (not of wall time: on a loaded machine that may take longer).
BURN = "import time\nwhile time.process_time() < {s}: pass\n"


def _stat(pid: int, name: str, utime: object, stime: object, cutime: object,
          cstime: object) -> str:
    # Fields 3..13 then utime (14), stime (15), cutime (16), cstime (17), then the rest.
    return (f"{pid} ({name}) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 "
            f"{utime} {stime} {cutime} {cstime} 20 0 1 0 12345 1000 100\n")


def test_sample_sums_every_process_ticks_children_included(tmp_path: Path) -> None:
    for pid, name, ticks in ((1, "init", (5, 5, 100, 20)), (42, "a) b (c)", (7, 3, 0, 0)),
                             (43, "bad", ("x", 1, 1, 1))):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(_stat(pid, name, *ticks))
    (tmp_path / "44").mkdir()  # ended while we looked: no stat
    (tmp_path / "self").mkdir()
    assert cpu_sample(str(tmp_path)).ticks == 130 + 10
    assert cpu_sample(str(tmp_path / "nowhere")).ticks == 0


def test_busy_between_is_a_fraction_of_all_cpus() -> None:
    before = CpuSample(ticks=1000, at=10.0)
    assert busy_between(before, CpuSample(ticks=1100, at=12.0), cpus=2, hz=100) == 0.25
    assert busy_between(before, CpuSample(ticks=9000, at=12.0), cpus=2, hz=100) == 1.0
    # A process whose ticks nobody collected ended: never below 0.
    assert busy_between(before, CpuSample(ticks=500, at=12.0), cpus=2, hz=100) == 0.0
    assert busy_between(before, CpuSample(ticks=1100, at=10.0), cpus=2, hz=100) is None


def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@pytest.mark.solo  # other workers' processes ending between the readings would be counted
def test_cpu_busy_counts_what_a_burning_process_used() -> None:
    """cpu_busy covers at least the CPU a burner got (measured on the burner itself, so a
    machine loaded by others, outside this namespace, cannot fail the test)."""
    cpus = os.cpu_count() or 1
    hz = os.sysconf("SC_CLK_TCK")
    meter = CpuMeter()
    first = meter.busy()  # measures a short window of its own
    assert first is not None and 0.0 <= first <= 1.0
    # One process burns a CPU second and ends before the next reading: its time reaches the
    # sum through this process's cutime when it is reaped.
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", BURN.format(s=1.0)])
    _, status, usage = os.wait4(proc.pid, 0)
    assert status == 0
    proc.returncode = 0
    busy = meter.busy()
    elapsed = time.monotonic() - started
    used = usage.ru_utime + usage.ru_stime
    assert used > 0.9, used  # it did burn
    assert busy is not None and 0.9 * used / elapsed / cpus - 0.02 <= busy <= 1.0, (
        busy, used, elapsed, cpus)
    # A burner that still runs at the reading counts too.
    proc = subprocess.Popen([sys.executable, "-c", BURN.format(s=30.0)])
    try:
        time.sleep(0.3)
        meter.busy()
        before, started = _ticks(proc.pid), time.monotonic()
        # At least a second, and until it had half a CPU second (a loaded machine).
        time.sleep(1.0)
        while _ticks(proc.pid) - before < hz // 2 and time.monotonic() - started < 20:
            time.sleep(0.1)
        used = (_ticks(proc.pid) - before) / hz
        busy = meter.busy()
        elapsed = time.monotonic() - started
        assert used >= 0.5, used
        assert busy is not None and 0.9 * used / elapsed / cpus - 0.02 <= busy <= 1.0, (
            busy, used, elapsed, cpus)
    finally:
        proc.kill()
        proc.wait()


def test_heartbeat_metrics_carry_cpu_busy(tmp_path: Path) -> None:
    facts = metrics(str(tmp_path))
    assert isinstance(facts["cpu_busy"], float) and 0.0 <= facts["cpu_busy"] <= 1.0
    assert len(facts["load"]) == 3
