"""Timing primitives: one whole process (wall time, peak RSS, CPU), repeated and interleaved.

Every process runs in a session of its own; when it exits (or is killed at its deadline) its
whole process group is killed too, so no tool leaves an `ssh` behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
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


def interleaved(jobs: Mapping[str, Callable[[], Sample]], *, warmup: int, runs: int,
                between: Callable[[str], None] | None = None) -> dict[str, list[Sample]]:
    """Run every job `warmup` times (discarded), then `runs` times, round-robin.

    Interleaving spreads the machine's background noise (other engineers' tests on two
    cores) evenly over the tools instead of landing on whichever ran last. `between(label)`
    runs before every job (e.g. to reset state on the hosts) and is not timed.
    """
    samples: dict[str, list[Sample]] = {label: [] for label in jobs}
    for round_ in range(warmup + runs):
        for label, job in jobs.items():
            if between is not None:
                between(label)
            sample = job()
            if round_ >= warmup:
                samples[label].append(sample)
    return samples


def load_average() -> float:
    """The 1-minute load average (how busy the machine was around a measurement)."""
    return os.getloadavg()[0]
