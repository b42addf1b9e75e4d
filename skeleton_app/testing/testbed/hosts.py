"""One host: its login user, its names and roles, launching its sshd inside new namespaces,
waiting for its banner, and running a command inside it."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from skeleton_app.errors import TestbedError, UsageError
from skeleton_app.nodes import validate_node_id, validate_role
from skeleton_app.testing.testbed.files import _hidden_dirs
from skeleton_app.testing.testbed.procs import _adopt, _alive, _init_pid
from skeleton_app.testing.testbed.state import (
    DEFAULT_COUNT,
    HOME,
    MARKER,
    MAX_HOSTS,
    USER,
    Testbed,
    TestbedHost,
)
from skeleton_app.testing.testbed.system import _PATH, _last_line, _run, require_root

SSHD = "/usr/sbin/sshd"


# Runs inside the new namespaces as
# `sh -c SCRIPT NS MARKER NODE_ID HOME_SRC HOME_DST HIDDEN INIT...`.
# Values arrive as positional parameters; NS and MARKER ($0, $1) are only there so that
# /proc/PID/cmdline identifies the process as ours. HIDDEN: directories (one per line) that
# get an empty read-only tmpfs over them: the controller's checkout and virtualenv, so that
# a host can never run the controller's packages (a missing set-up step would hide there).
_LAUNCH_SH = """\
set -e
hostname "$2"
# The host's own name resolves, as on an installed machine (127.0.1.1 in /etc/hosts); else
# sudo adds "unable to resolve host" to every command's stderr. A copy in the host's dir,
# bind-mounted in this mount namespace only: the machine's /etc/hosts is left alone.
etc_hosts="$(dirname "$3")/etc-hosts"
{ cat /etc/hosts 2>/dev/null || true; printf '127.0.1.1\t%s\n' "$2"; } >"$etc_hosts"
mount --bind "$etc_hosts" /etc/hosts || true
# JACK keeps its server sockets, semaphores and shared memory in /dev/shm: a real node has its
# own, and hosts sharing the machine's would see each other's servers (same uid, same name).
mount -t tmpfs -o mode=1777,nosuid,nodev skeleton-shm /dev/shm || true
mount --bind "$3" "$4"
printf '%s\\n' "$5" | while IFS= read -r dir; do
    [ -z "$dir" ] || mount -t tmpfs -o ro,size=4k skeleton-hidden "$dir"
done
shift 5
exec "$@"
"""


def host_exec(
    testbed: Testbed,
    host_id: str,
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` as root inside `host_id`'s network, mount, UTS and PID namespaces."""
    require_root()
    host = testbed.host(host_id)
    pid = _init_pid(host)
    return _run(
        ["nsenter", "-t", str(pid), "--net", "--mount", "--uts", "--pid", "--", *argv],
        input=input, check=check, timeout=timeout,
    )


def _host_ids(count: int | None, names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        raise UsageError("names must be a sequence of node ids, not one string")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
        raise UsageError(f"host count must be an integer, got {count!r}")
    if names:
        if count is not None and count != len(names):
            raise UsageError(f"{count} hosts asked for but {len(names)} names given")
        ids = list(names)
    else:
        n = DEFAULT_COUNT if count is None else count
        width = max(2, len(str(n)))
        ids = [f"node-{i:0{width}d}" for i in range(1, n + 1)]
    if not 1 <= len(ids) <= MAX_HOSTS:
        raise UsageError(f"a testbed has 1 to {MAX_HOSTS} hosts, not {len(ids)}")
    for node_id in ids:
        try:
            validate_node_id(node_id)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if len(set(ids)) != len(ids):
        raise UsageError("duplicate host names")
    return ids


def _host_roles(ids: Sequence[str], roles: Mapping[str, Sequence[str]] | None
                ) -> dict[str, tuple[str, ...]]:
    unknown = set(roles or {}) - set(ids)
    if unknown:
        raise UsageError(f"roles given for unknown hosts: {', '.join(sorted(unknown))}")
    out: dict[str, tuple[str, ...]] = {}
    for index, node_id in enumerate(ids, start=1):
        if roles and node_id in roles:
            chosen = tuple(roles[node_id])
            try:
                for role in chosen:
                    validate_role(role)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        else:
            # Odd and even hosts differ so that role selection has something to select.
            chosen = ("testbed", "stt" if index % 2 else "tts")
        out[node_id] = chosen
    return out


def _ensure_user() -> pwd.struct_passwd:
    """The login user: created if missing, unlocked (sshd with UsePAM no refuses '!')."""
    try:
        account = pwd.getpwnam(USER)
    except KeyError:
        proc = _run(["useradd", "-m", "-s", "/bin/bash", USER], check=False)
        try:
            account = pwd.getpwnam(USER)
        except KeyError:
            # Not even a concurrent `up` created it meanwhile.
            raise TestbedError(
                f"cannot create user {USER!r}: {_last_line(proc.stderr)}"
            ) from None
    if _password_field(USER).startswith("!"):
        _run(["usermod", "-p", "*", USER])
    Path(HOME).mkdir(mode=0o755, exist_ok=True)  # the mount point of every host's home
    return account


def _password_field(user: str) -> str:
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user and len(fields) > 1:
                return fields[1]
    except OSError:
        pass
    return ""


def _check_interpreter(account: pwd.struct_passwd) -> None:
    """The hosts run the daemon with `sys.executable` as USER: make sure USER can."""
    for path in (sys.executable, os.path.realpath(sys.executable), sys.prefix, sys.base_prefix):
        blocked = _blocking_dir(Path(path), account)
        if blocked is not None:
            raise TestbedError(
                f"the test hosts run {sys.executable} as user {USER!r}, who cannot enter"
                f" {blocked}: create the virtualenv in a directory others may traverse"
                " (e.g. /opt or the project checkout, not under /root)"
            )
    probe = ("import os, sysconfig; os.listdir(sysconfig.get_paths()['purelib'])")
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", probe], user=account.pw_uid, group=account.pw_gid,
            extra_groups=[], cwd="/", env={"PATH": _PATH}, capture_output=True, text=True,
            timeout=30, check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise TestbedError(f"cannot run {sys.executable} as {USER!r}: {exc}") from exc
    if proc.returncode != 0:
        raise TestbedError(
            f"user {USER!r} cannot use {sys.executable}: {_last_line(proc.stderr)}"
        )


def _blocking_dir(path: Path, account: pwd.struct_passwd) -> Path | None:
    """The first directory on the way to `path` that `account` may not traverse."""
    groups = {account.pw_gid} | set(os.getgrouplist(account.pw_name, account.pw_gid))
    for directory in [*reversed(path.parents), path]:
        try:
            st = directory.stat()
        except OSError:
            return directory
        if not directory.is_dir():
            break
        if st.st_uid == account.pw_uid:
            allowed = st.st_mode & 0o100
        elif st.st_gid in groups:
            allowed = st.st_mode & 0o010
        else:
            allowed = st.st_mode & 0o001
        if not allowed:
            return directory
    return None


def _launch(host: TestbedHost) -> int:
    argv = [
        "ip", "netns", "exec", host.namespace,
        "unshare", "--mount", "--pid", "--uts", "--fork", "--mount-proc",
        "--propagation", "private",
        "sh", "-c", _LAUNCH_SH, host.namespace, MARKER, host.id, str(host.home), HOME,
        "\n".join(_hidden_dirs(host.dir)),
        # The real interpreter, not a virtualenv's link to it: that may be hidden.
        os.path.realpath(sys.executable), "-I", "-S",
        str(host.dir.parent.parent / "host-init.py"),
        host.namespace, MARKER, str(host.sshd_want),
        SSHD, "-D", "-f", str(host.sshd_config), "-E", str(host.sshd_log),
    ]
    with open(host.dir / "launcher.log", "ab") as log:
        # A session of its own: the terminal's ^C does not reach the hosts, and `down`
        # kills the launcher and the host's PID 1 together as one process group.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                cwd="/", env={"PATH": _PATH, "LANG": "C.UTF-8"},
                                start_new_session=True)
    _adopt(proc)
    return proc.pid


def _banner(ip: str, timeout: float) -> bool:
    """Does ip:22 answer with an SSH banner within `timeout`?"""
    try:
        with socket.create_connection((ip, 22), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _wait_banner(ip: str, deadline: float, launcher_pid: int | None = None) -> bool:
    while time.monotonic() < deadline:
        if _banner(ip, timeout=2.0):
            return True
        if launcher_pid is not None and not _alive(launcher_pid):
            return False  # the host died: no point waiting for it
        time.sleep(0.05)
    return False
