"""Our processes: proving a pid is one of ours before signalling it, and reaping it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from skeleton_app.errors import TestbedError
from skeleton_app.testing.testbed.state import MARKER, TestbedHost

# Launchers started by this process: kept so that `down` can reap them (no zombies, no
# "still running" warnings). Launchers started by another process are not our children.
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def _adopt(proc: subprocess.Popen[bytes]) -> None:
    """Remember a launcher this process started, for `_reap`."""
    with _children_lock:
        _children[proc.pid] = proc


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, ppid) of a process, None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # comm may contain spaces and parentheses
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    st = _proc_state(pid)
    return st is not None and st[0] not in ("Z", "X")


def _is_our_process(pid: int, namespace: str) -> bool:
    """`pid` is alive and still one of our launcher/init processes for `namespace`."""
    if pid <= 1 or not _alive(pid):
        return False
    argv = _cmdline(pid)
    return namespace in argv and MARKER in argv


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _children_of(parents: Iterable[int]) -> dict[int, int]:
    """{parent: one child} for the given parents, from one walk over /proc."""
    wanted = set(parents)
    found: dict[int, int] = {}
    for pid in _pids():
        st = _proc_state(pid)
        if st is not None and st[1] in wanted:
            found.setdefault(st[1], pid)
    return found


def _processes_in_pid_ns(pid_ns: str | None) -> list[int]:
    if pid_ns is None:
        return []
    return [pid for pid in _pids() if _readlink(f"/proc/{pid}/ns/pid") == pid_ns]


def _marked_processes(namespaces: Iterable[str]) -> list[tuple[int, str]]:
    """Launchers and inits (they carry MARKER and the namespace name) of these namespaces."""
    wanted = set(namespaces)
    if not wanted:
        return []
    found: list[tuple[int, str]] = []
    for pid in _pids():
        argv = _cmdline(pid)
        if MARKER not in argv or not _alive(pid):
            continue
        for ns in wanted & set(argv):
            found.append((pid, ns))
            break
    return found


def _init_pid(host: TestbedHost) -> int:
    if host.init_pid and _is_our_process(host.init_pid, host.namespace):
        return host.init_pid
    raise TestbedError(
        f"{host.id} is not running (its PID 1, host pid {host.init_pid}, is gone):"
        " run `skeleton testbed down` and `up` again"
    )


def _reap(pid: int, timeout: float = 10.0) -> None:
    """Wait until a killed process is gone (or a zombie), reaping it if it is our child."""
    with _children_lock:
        proc = _children.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
        return
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
