"""The heartbeat's `cpu_busy`: the fraction of all CPUs that the processes in /proc used over
the last interval (routing scores CPU by it: /proc/loadavg is the same in every namespace of
a machine). Real processes burn real CPU here; a made-up /proc checks the parsing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from skeleton_app.agent.metrics import CpuMeter, CpuSample, busy_between, cpu_sample, metrics

BURN = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass\n"


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


def test_cpu_busy_rises_while_a_process_burns_cpu() -> None:
    meter = CpuMeter()
    first = meter.busy()  # measures a short window of its own
    assert first is not None and 0.0 <= first <= 1.0
    cpus = os.cpu_count() or 1
    # One process burns one CPU for a second and ends before the next reading: its time
    # reaches us through this process's cutime when it is reaped.
    subprocess.run([sys.executable, "-c", BURN.format(s=1.0)], check=True, timeout=30)
    busy = meter.busy()
    assert busy is not None
    assert 0.7 / cpus <= busy <= 1.0, (busy, cpus)
    # And a burner that still runs at the reading counts too.
    proc = subprocess.Popen([sys.executable, "-c", BURN.format(s=3.0)])
    try:
        meter.busy()
        time.sleep(1.0)
        assert (meter.busy() or 0.0) >= 0.7 / cpus
    finally:
        proc.kill()
        proc.wait()


def test_heartbeat_metrics_carry_cpu_busy(tmp_path: Path) -> None:
    facts = metrics(str(tmp_path))
    assert isinstance(facts["cpu_busy"], float) and 0.0 <= facts["cpu_busy"] <= 1.0
    assert len(facts["load"]) == 3
