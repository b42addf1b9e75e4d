"""Fault injectors for tests: stop/start sshd, freeze/thaw, blackhole, link down/up, a
slow link, a full disk, and hidden, replaced or planted commands."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from skeleton_app.errors import TestbedError, UsageError
from skeleton_app.testing.testbed.hosts import _wait_banner, host_exec
from skeleton_app.testing.testbed.net import _apply_rate, _check_ip, _check_rate
from skeleton_app.testing.testbed.procs import (
    _init_pid,
    _proc_state,
    _processes_in_pid_ns,
    _readlink,
)
from skeleton_app.testing.testbed.state import APP_DIR, USER, Testbed, TestbedHost, _update_host
from skeleton_app.testing.testbed.system import _last_line, _run, _tail, _write, require_root


def set_rate(testbed: Testbed, host_id: str, rate: str | None) -> Testbed:
    """Shape `host_id`'s link both ways to `rate` (tc tbf), or remove shaping with None."""
    require_root()
    host = testbed.host(host_id)
    if rate is not None:
        _check_rate(rate)
    _apply_rate(host.veth, None, rate)
    _apply_rate("eth0", host.namespace, rate)
    return _update_host(testbed, host_id, rate=rate)


def stop_sshd(testbed: Testbed, host_id: str, *, timeout: float = 10.0) -> None:
    """Stop the host's sshd listener: new connections are refused, sessions carry on."""
    require_root()
    host = testbed.host(host_id)
    _want_sshd(host, running=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host.ip, 22), timeout=1.0):
                pass
        except ConnectionRefusedError:
            return
        except OSError:
            pass
        time.sleep(0.05)
    raise TestbedError(f"{host_id}: sshd still accepts connections {timeout:.0f}s after stop")


def start_sshd(testbed: Testbed, host_id: str, *, timeout: float = 10.0) -> None:
    """Start the host's sshd again (same address, host key and home)."""
    require_root()
    host = testbed.host(host_id)
    _want_sshd(host, running=True)
    if not _wait_banner(host.ip, time.monotonic() + timeout):
        raise TestbedError(f"{host_id}: sshd did not come back: {_tail(host.sshd_log)}")


def _want_sshd(host: TestbedHost, *, running: bool) -> None:
    """Tell the host's PID 1 whether sshd should run (see host_init.py)."""
    pid = _init_pid(host)
    path = host.sshd_want
    tmp = path.with_suffix(".tmp")
    tmp.write_text("running\n" if running else "stopped\n")
    os.replace(tmp, path)
    os.kill(pid, signal.SIGUSR1)


def freeze(testbed: Testbed, host_id: str) -> list[int]:
    """SIGSTOP every process of the host (TCP still accepts, nothing answers). Returns pids."""
    require_root()
    host = testbed.host(host_id)
    pid_ns = _readlink(f"/proc/{_init_pid(host)}/ns/pid")
    stopped: set[int] = set()
    # Repeat until a pass finds nothing new: a process may fork while we walk /proc.
    while True:
        fresh = [p for p in _processes_in_pid_ns(pid_ns) if p not in stopped]
        if not fresh:
            break
        for pid in fresh:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
            stopped.add(pid)
    # SIGSTOP takes effect asynchronously: return only once nothing runs any more.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        states = [_proc_state(pid) for pid in stopped]
        if all(st is None or st[0] in ("T", "t", "Z", "X") for st in states):
            break
        time.sleep(0.01)
    return sorted(stopped)


def thaw(testbed: Testbed, host_id: str) -> None:
    """SIGCONT every process of the host."""
    require_root()
    host = testbed.host(host_id)
    pid_ns = _readlink(f"/proc/{_init_pid(host)}/ns/pid")
    for pid in _processes_in_pid_ns(pid_ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def blackhole(testbed: Testbed, host_id: str, target_ip: str | None = None) -> None:
    """Inside the host, silently drop everything towards `target_ip` (default: the gateway,
    i.e. the controller): connects from there time out."""
    require_root()
    host = testbed.host(host_id)
    target = _check_ip(target_ip or testbed.gateway)
    _run(["ip", "-n", host.namespace, "route", "replace", "blackhole", f"{target}/32"])


def clear_blackhole(testbed: Testbed, host_id: str, target_ip: str | None = None) -> None:
    require_root()
    host = testbed.host(host_id)
    target = _check_ip(target_ip or testbed.gateway)
    proc = _run(["ip", "-n", host.namespace, "route", "del", "blackhole", f"{target}/32"],
                check=False)
    if proc.returncode != 0 and "No such process" not in proc.stderr:
        raise TestbedError(f"{host_id}: cannot clear blackhole: {_last_line(proc.stderr)}")


def link_down(testbed: Testbed, host_id: str) -> None:
    """Take the host's eth0 down (a partition: the host is cut off from everything)."""
    require_root()
    host = testbed.host(host_id)
    _run(["ip", "-n", host.namespace, "link", "set", "eth0", "down"])


def link_up(testbed: Testbed, host_id: str) -> None:
    require_root()
    host = testbed.host(host_id)
    # The kernel dropped the default route with the link: put it back.
    _run(["ip", "-n", host.namespace, "-batch", "-"],
         input=f"link set eth0 up\nroute replace default via {testbed.gateway}\n")


@contextlib.contextmanager
def small_disk(testbed: Testbed, host_id: str, size: str = "2M") -> Iterator[str]:
    """A `size` tmpfs over the host's app dir (empty while mounted): writes hit ENOSPC.

    Only that host sees it (its own mount namespace). Yields the app dir path.
    """
    if not re.fullmatch(r"[0-9]+[kKmMgG]?", size):
        raise UsageError(f"invalid tmpfs size {size!r}: expected e.g. 2M")
    account = pwd.getpwnam(USER)
    opts = f"size={size},mode=0755,uid={account.pw_uid},gid={account.pw_gid}"
    host_exec(testbed, host_id, ["mount", "-t", "tmpfs", "-o", opts, "skeleton-small-disk",
                                 APP_DIR])
    try:
        yield APP_DIR
    finally:
        # Lazy: a process still inside the mount must not keep the host broken.
        host_exec(testbed, host_id, ["umount", "-l", APP_DIR])


def hide_command(testbed: Testbed, host_id: str, path: str) -> None:
    """Make `path` (e.g. /usr/bin/rsync) fail with 127 "command not found" on one host."""
    if not os.path.isabs(path):
        raise UsageError(f"hide_command needs an absolute path, got {path!r}")
    script = testbed.state_dir / "hidden-command"
    host_exec(testbed, host_id, ["mount", "--bind", str(script), path])


def replace_command(testbed: Testbed, host_id: str, path: str, script: str) -> None:
    """Make `path` run `script` (a `#!` script) on one host: e.g. a python3 that is too old.
    `unhide_command` undoes it."""
    if not os.path.isabs(path):
        raise UsageError(f"replace_command needs an absolute path, got {path!r}")
    fake = testbed.state_dir / f"replaced-{host_id}-{os.path.basename(path)}"
    _write(fake, script, 0o755)
    host_exec(testbed, host_id, ["mount", "--bind", str(fake), path])


def unhide_command(testbed: Testbed, host_id: str, path: str) -> None:
    host_exec(testbed, host_id, ["umount", path])


def real_command(testbed: Testbed, path: str) -> Path:
    """A copy of the binary `path` (e.g. /usr/bin/find) that every host can run: what a
    command planted over `path` calls to do the real work."""
    if not os.path.isabs(path):
        raise UsageError(f"real_command needs an absolute path, got {path!r}")
    copy = testbed.state_dir / "real" / os.path.basename(path)
    if not copy.exists():
        copy.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.copy2(path, copy)
    return copy


def plant_command(testbed: Testbed, host_id: str, path: str, script: str) -> None:
    """Make the shell script `script` answer for `path` (e.g. a lying /usr/bin/find) inside
    one host only, until `unhide_command`: a compromised node, for tests."""
    if not os.path.isabs(path):
        raise UsageError(f"plant_command needs an absolute path, got {path!r}")
    planted = testbed.state_dir / "planted" / host_id / os.path.basename(path)
    planted.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    _write(planted, script, 0o755)
    host_exec(testbed, host_id, ["mount", "--bind", str(planted), path])
