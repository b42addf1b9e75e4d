"""Timing primitives: one whole process (wall time, peak RSS, CPU), repeated and interleaved.

Every process runs in a session of its own; when it exits (or is killed at its deadline) its
whole process group is killed too, so no tool leaves an `ssh` behind.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

TIME = "/usr/bin/time"  # GNU time (Debian package `time`)


class BenchError(Exception):
    """A measurement failed (a tool exited non-zero, a testbed did not come up, ...)."""


@dataclass(frozen=True, slots=True)
class Sample:
    seconds: float
    max_rss_kib: int = 0  # peak RSS of the process (or its largest waited-for descendant)
    cpu_seconds: float = 0.0  # user + system of the process and its waited-for descendants


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass(frozen=True, slots=True)
class Command:
    """A whole-process measurement: argv and environment."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None = None
    timeout: float = 120.0


def run_process(command: Command, label: str) -> Sample:
    """Run `command` to completion; BenchError unless it exits 0.

    Peak RSS and CPU come from GNU time (`/usr/bin/time`), not from our own wait4(): Linux
    charges a child with the RSS its parent had when it forked (exec records the old
    address space's high-water mark), so a child of this Python process would never show
    less than ours. GNU time is a small C program; what it reports is the tool's own.
    """
    with tempfile.NamedTemporaryFile("w+") as usage, tempfile.TemporaryFile() as output:
        argv = [TIME, "-f", "%M %U %S", "-o", usage.name, *command.argv]
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output,
                                stderr=subprocess.STDOUT, env=dict(command.env),
                                cwd=command.cwd, start_new_session=True)
        timer = threading.Timer(command.timeout, _kill_group, (proc.pid,))
        timer.start()
        try:
            code = proc.wait()
        finally:
            timer.cancel()
            _kill_group(proc.pid)
        elapsed = time.perf_counter() - started
        if code != 0:
            output.seek(0)
            tail = output.read()[-800:].decode("utf-8", "replace").strip()
            why = "timed out" if elapsed >= command.timeout else f"exit {code}"
            raise BenchError(f"{label}: {why}: {tail}")
        rss_kib, user, system = usage.read().split()[-3:]
    return Sample(seconds=elapsed, max_rss_kib=int(rss_kib),
                  cpu_seconds=float(user) + float(system))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def interleaved(jobs: Mapping[str, Callable[[], Sample]], *, warmup: int,
                runs: int) -> dict[str, list[Sample]]:
    """Run every job `warmup` times (discarded), then `runs` times, round-robin.

    Interleaving spreads the machine's background noise (other engineers' tests on two
    cores) evenly over the tools instead of landing on whichever ran last.
    """
    samples: dict[str, list[Sample]] = {label: [] for label in jobs}
    for round_ in range(warmup + runs):
        for label, job in jobs.items():
            sample = job()
            if round_ >= warmup:
                samples[label].append(sample)
    return samples


@dataclass(frozen=True, slots=True)
class CpuShare:
    """Who used the machine's CPU during a case: us, or other work (noise)."""

    seconds: float  # wall time of the case
    ours: float  # CPU-s of this process, the tools it ran and the test hosts
    other: float  # CPU-s of everything else on the machine (others' tests, ...)
    load: tuple[float, float]  # 1-minute load average at the start and at the end

    @property
    def other_share(self) -> float:
        """Other work as a fraction of the machine's capacity during the case."""
        return self.other / max(1e-9, self.seconds * (os.cpu_count() or 1))

    def describe(self) -> str:
        return (f"{self.seconds:.0f} s; CPU used by the benchmark, its tools and test hosts"
                f" {self.ours:.1f} s, by other work on the machine {self.other:.1f} s"
                f" ({100 * self.other_share:.0f}% of its {os.cpu_count()} cores); load"
                f" average {self.load[0]:.1f} → {self.load[1]:.1f}.")


def _machine_cpu() -> float:
    """CPU-s the whole machine spent since boot (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    return (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]) / os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU-s of the process and of the children it reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    cpu = sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return int(fields[1]), cpu


def tree_cpu(roots: Iterable[int]) -> float:
    """CPU-s of `roots` and their direct children, reaped descendants included (for a test
    host: its PID 1 and its sshd listener, which reaps every session)."""
    wanted = set(roots)
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            got = _proc_stat(int(entry))
            if got and (int(entry) in wanted or got[0] in wanted):
                total += got[1]
    return total


class CpuMeter:
    """Measures a case's CPU split into ours and other work. `hosts()` gives the PID 1 of
    every test host (their sessions are ours too)."""

    def __init__(self, hosts: Callable[[], Iterable[int]]):
        self.hosts = hosts
        self.result: CpuShare | None = None

    def _ours(self) -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
                + tree_cpu(self.hosts()))

    def __enter__(self) -> CpuMeter:
        self._start = (time.monotonic(), self._ours(), _machine_cpu(), load_average())
        return self

    def __exit__(self, *exc: object) -> None:
        t0, ours0, machine0, load0 = self._start
        ours = self._ours() - ours0
        self.result = CpuShare(seconds=time.monotonic() - t0, ours=ours,
                               other=max(0.0, _machine_cpu() - machine0 - ours),
                               load=(load0, load_average()))


def load_average() -> float:
    """The 1-minute load average (how busy the machine was around a measurement)."""
    return os.getloadavg()[0]
