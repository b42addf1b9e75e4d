"""A local test cluster: N real SSH hosts on this machine, each in its own namespaces.

    tb = up(6)                          # node-01..node-06, strict host keys, config written
    tb.config_path                      # STATE/config.yaml: `skeleton cluster ... --config` it
    host_exec(tb, "node-02", ["ps", "-e"])
    with small_disk(tb, "node-03"): ...
    down(tb.state_dir)                  # safe twice, and after a crash

One host is one `sshd -D` on port 22 of its own address, in its own network, mount, PID and
UTS namespace. The network namespace gets a veth pair whose other end sits on a bridge in
the root namespace; the bridge holds the gateway address (what the hosts see as "the
controller", and where `--db` PostgreSQL listens). Each host bind-mounts its own directory
(on the real filesystem, under the state dir) over `/home/skeleton`, so every host has the
same paths (`/home/skeleton/app`) with different content.

Names and addresses are per *instance* (0..200), so two testbeds never collide:

    subnet      10.213.INSTANCE.0/24, gateway .1, node N at .(10+N)
    bridge      sktbINSTANCE
    namespaces  sktbINSTANCE-NODE_ID
    veths       skINSTANCEhN  (host side; the namespace side is `eth0`)
    state dir   /tmp/skeleton-testbed-INSTANCE ($SKELETON_TESTBED_DIR or `state_dir=`)

State dir layout:

    .skeleton-testbed     marker: `down` only deletes a directory that carries it
    state.json            instance, bridge, subnet, hosts (pids, veths, rates), db
    config.yaml           ready for `load_config` and every `--config`
    ssh_config            the same hosts for OpenSSH: `ssh -F STATE/ssh_config node-01`
    id_ed25519[.pub]      the controller's key; known_hosts: `ID ...` and `IP ...` per host
    hidden-command        what `hide_command` bind-mounts over a binary (exits 127)
    host-init.py          PID 1 of every host
    db/                   PostgreSQL (`--db`, skeleton_app.testing.localdb)
    hosts/ID/             host key, sshd_config, sshd.log, sshd.want, launcher.log,
                          home/ (bind-mounted over /home/skeleton inside the host)

Process layout of one host, as seen from the root namespace:

    unshare ...          the *launcher*: a process-group leader, its pid is in state.json
     └ host-init.py      PID 1 of the host (`init_pid`): reaps orphans, starts/stops sshd
        └ sshd -D        the listener, and below it the sessions

PID 1 is a tiny reaper rather than sshd itself so that stopping sshd (a fault we inject)
behaves as on a real machine: the listener goes, sessions and daemons stay. A pidfile written
inside a PID namespace holds that namespace's numbers (1 for init), so every pid we record or
signal is a host-side pid, and before signalling one we check that /proc/PID/cmdline still
names our namespace (pid reuse).

Choices documented here:

* `up` on a state dir that holds a testbed raises TestbedError ("run `skeleton testbed down`
  first"); it is not idempotent, because a half-alive leftover is better removed than reused.
* The daemon runs from the host's own `app/.venv`, which `skeleton cluster bootstrap` makes
  (as on a real node); the config names the checkout's `.wheelhouse` when ./scripts/setup
  built one, so that works without network. Each host's PID 1 is the controller's
  interpreter (`sys.executable`, `-I -S`), and tests still run it inside hosts: `up` checks
  that the `skeleton` user can run it (a virtualenv under /root, mode 700, cannot be); if
  not, it raises a TestbedError naming the directory rather than re-exposing paths.
* `deploy.source` is always explicit: the checkout, or STATE/app for an installed package
  (never the state dir, which holds the controller's private key).
* Hosts share /tmp, /run and /var with the machine (only their home differs): the state dir
  lives in /tmp and sshd must read its host key from there.
* Argument errors (count, names, instance, rate, unknown host) are UsageError/SelectionError;
  everything the machine refuses is TestbedError.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from skeleton_app.errors import SelectionError, TestbedError, UsageError
from skeleton_app.nodes import validate_node_id, validate_role
from skeleton_app.testing import localdb

__all__ = [
    "APP_DIR",
    "HOME",
    "MARKER",
    "USER",
    "HostStatus",
    "Testbed",
    "TestbedDatabase",
    "TestbedHost",
    "blackhole",
    "bridge_name",
    "clear_blackhole",
    "default_state_dir",
    "down",
    "freeze",
    "hide_command",
    "host_exec",
    "link_down",
    "link_up",
    "load",
    "netns_name",
    "replace_command",
    "require_root",
    "set_rate",
    "small_disk",
    "start_sshd",
    "status",
    "stop_sshd",
    "thaw",
    "unhide_command",
    "up",
    "veth_name",
]

USER = "skeleton"  # the login user on every test host
HOME = "/home/skeleton"
APP_DIR = "/home/skeleton/app"
NODE_DSN_FILE = ".config/skeleton/node.dsn"  # under HOME: registry.node_dsn_file's default
WHEELHOUSE = ".wheelhouse"  # in a checkout: wheels ./scripts/setup pre-builds for bootstrap
SSHD = "/usr/sbin/sshd"
SUBNET_PREFIX = "10.213"  # 10.213.INSTANCE.0/24: nothing else on these machines uses it
MAX_INSTANCE = 200
AUTO_INSTANCES = range(20, MAX_INSTANCE + 1)  # `instance=None` claims one of these
FIRST_HOST_OCTET = 11  # node-01 is .11, the gateway .1
MAX_HOSTS = 254 - FIRST_HOST_OCTET + 1
DEFAULT_COUNT = 3
DEFAULT_RATE_BURST = "256kb"
DEFAULT_RATE_LATENCY = "50ms"
MARKER = "skeleton-testbed-host"  # an argv element of every launcher and init we start
_STATE_MARKER = ".skeleton-testbed"
_STATE_VERSION = 1
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_RATE_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)$")
_SAFE_PATH_RE = re.compile(r"^/[A-Za-z0-9._/+-]*$")  # goes into sshd_config unquoted
_ROOT_MESSAGE = "skeleton testbed needs root (network namespaces): run it with sudo"
_INSTALL_HINT = "install it with `apt-get install -y openssh-server rsync iproute2`"

# Runs inside the new namespaces as
# `sh -c SCRIPT NS MARKER NODE_ID HOME_SRC HOME_DST HIDDEN INIT...`.
# Values arrive as positional parameters; NS and MARKER ($0, $1) are only there so that
# /proc/PID/cmdline identifies the process as ours. HIDDEN: directories (one per line) that
# get an empty read-only tmpfs over them: the controller's checkout and virtualenv, so that
# a host can never run the controller's packages (a missing set-up step would hide there).
_LAUNCH_SH = """\
set -e
hostname "$2"
mount --bind "$3" "$4"
printf '%s\\n' "$5" | while IFS= read -r dir; do
    [ -z "$dir" ] || mount -t tmpfs -o ro,size=4k skeleton-hidden "$dir"
done
shift 5
exec "$@"
"""

# PID 1 of a host, STATE/host-init.py, run as
# `python -I -S STATE/host-init.py NS MARKER WANT_FILE SSHD...` (a file rather than `-c`
# keeps `ps` readable). It starts sshd, reaps every orphan (daemons started over SSH end up
# here), and on SIGUSR1 makes sshd match WANT_FILE ("running"/"stopped", for fault
# injection). A file plus one signal, rather than one signal per action, because pending
# signals coalesce and are taken lowest number first: "stop" then "start" sent back to back
# could otherwise be applied in the wrong order. SIGTERM ends the host (the kernel then
# kills every process in it).
_INIT_PY = """\
# PID 1 of a skeleton test host (written by skeleton_app.testing.testbed; see there).
import os, signal, sys, time
want_file = sys.argv[3]
sshd = sys.argv[4:]
watched = {signal.SIGCHLD, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT}
for sig in watched:
    # The kernel drops signals that PID 1 has no handler for, even blocked ones.
    signal.signal(sig, lambda *_: None)
signal.pthread_sigmask(signal.SIG_BLOCK, watched)
child = 0  # the sshd listener, 0 when none runs


def reap():
    global child
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == child:
            child = 0


def wanted():
    try:
        with open(want_file) as fh:
            return fh.read().strip() != "stopped"
    except OSError:
        return True


def start():
    global child
    pid = os.fork()
    if pid == 0:
        try:
            for sig in watched:
                signal.signal(sig, signal.SIG_DFL)
            # Python ignores these at startup; sessions must get the defaults back.
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.setsid()
            os.execv(sshd[0], sshd)
        finally:
            os._exit(127)
    child = pid


def stop():
    # Only the listener: its sessions live on, as with `systemctl stop ssh`.
    os.kill(child, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while child and time.monotonic() < deadline:
        time.sleep(0.01)
        reap()
    if child:
        os.kill(child, signal.SIGKILL)
        while child:
            time.sleep(0.01)
            reap()


def reconcile():
    reap()
    if wanted() and not child:
        start()
    elif not wanted() and child:
        stop()


reconcile()
while True:
    sig = signal.sigwait(watched)
    if sig == signal.SIGCHLD:
        reap()
    elif sig == signal.SIGUSR1:
        reconcile()
    else:
        sys.exit(0)
"""

_HIDDEN_COMMAND = """\
#!/bin/sh
# Bind-mounted by `skeleton_app.testing.testbed.hide_command` over a binary inside a test host.
echo "$0: command not found (hidden by skeleton testbed)" >&2
exit 127
"""

# Launchers started by this process: kept so that `down` can reap them (no zombies, no
# "still running" warnings). Launchers started by another process are not our children.
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


# ---------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class TestbedHost:
    """One test host. Pids are host-side (root namespace) pids."""

    __test__ = False  # not a pytest test class

    id: str
    index: int  # 1-based
    ip: str
    namespace: str
    veth: str  # host-side end; the namespace side is eth0
    roles: tuple[str, ...]
    dir: Path  # STATE/hosts/ID
    launcher_pid: int
    init_pid: int  # the host's PID 1; 0 until it has been seen
    rate: str | None = None

    @property
    def home(self) -> Path:
        """Host-side directory that is /home/skeleton inside this host."""
        return self.dir / "home"

    @property
    def app_dir(self) -> Path:
        """Host-side directory that is /home/skeleton/app inside this host."""
        return self.home / "app"

    @property
    def sshd_config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def sshd_log(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def sshd_want(self) -> Path:
        """"running" or "stopped": what the host's PID 1 makes of sshd on SIGUSR1."""
        return self.dir / "sshd.want"

    @property
    def host_key_pub(self) -> Path:
        return self.dir / "ssh_host_ed25519_key.pub"


@dataclass(frozen=True, slots=True)
class TestbedDatabase:
    dir: Path
    port: int
    pid: int
    dsn: str  # through 127.0.0.1 (controller)
    host_dsn: str  # through the gateway address: what the hosts (and config.yaml) use


@dataclass(frozen=True, slots=True)
class Testbed:
    """A snapshot of STATE/state.json. `load()` reads a fresh one."""

    __test__ = False

    instance: int
    state_dir: Path
    bridge: str
    subnet: str
    gateway: str
    hosts: tuple[TestbedHost, ...]
    db: TestbedDatabase | None = None

    @property
    def config_path(self) -> Path:
        return self.state_dir / "config.yaml"

    @property
    def ssh_config_path(self) -> Path:
        return self.state_dir / "ssh_config"

    @property
    def identity_file(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(h.id for h in self.hosts)

    def host(self, host_id: str) -> TestbedHost:
        for h in self.hosts:
            if h.id == host_id:
                return h
        raise SelectionError(
            f"unknown test host {host_id!r} (known: {', '.join(self.ids) or 'none'})"
        )


@dataclass(frozen=True, slots=True)
class HostStatus:
    id: str
    ip: str
    namespace: str
    pid: int  # the host's PID 1, host-side
    alive: bool
    reachable: bool  # port 22 answered with an SSH banner


# ---------------------------------------------------------------------------- names


def bridge_name(instance: int) -> str:
    return f"sktb{instance}"


def netns_name(instance: int, node_id: str) -> str:
    return f"sktb{instance}-{node_id}"


def veth_name(instance: int, index: int) -> str:
    return f"sk{instance}h{index}"  # at most 9 characters: IFNAMSIZ is 16


def default_state_dir(instance: int = 0) -> Path:
    env = os.environ.get("SKELETON_TESTBED_DIR")
    return Path(env) if env else Path(f"/tmp/skeleton-testbed-{instance}")


def _gateway(instance: int) -> str:
    return f"{SUBNET_PREFIX}.{instance}.1"


def _host_ip(instance: int, index: int) -> str:
    return f"{SUBNET_PREFIX}.{instance}.{FIRST_HOST_OCTET + index - 1}"


def _check_instance(instance: int) -> int:
    if isinstance(instance, bool) or not isinstance(instance, int):
        raise UsageError(f"testbed instance must be an integer, got {instance!r}")
    if not 0 <= instance <= MAX_INSTANCE:
        raise UsageError(f"testbed instance must be from 0 to {MAX_INSTANCE}, got {instance}")
    return instance


# ---------------------------------------------------------------------------- public API


def require_root() -> None:
    if os.geteuid() != 0:
        raise TestbedError(_ROOT_MESSAGE)


def up(
    count: int | None = None,
    names: Sequence[str] = (),
    *,
    rate: str | None = None,
    db: bool = False,
    instance: int | None = 0,
    state_dir: str | os.PathLike[str] | None = None,
    roles: Mapping[str, Sequence[str]] | None = None,
) -> Testbed:
    """Start the hosts, write STATE/config.yaml and STATE/state.json; return the testbed.

    `names` default to node-01..node-NN (`count`, default 3). Roles default to `testbed`
    for every host plus `stt` on odd and `tts` on even ones; `roles` overrides per host.
    `rate` (tc syntax, "200mbit") shapes both directions of every host's link. `db` also
    starts a throwaway PostgreSQL on 127.0.0.1 and the gateway. `instance=None` claims a
    free instance (for tests running side by side). On any failure everything already
    created is removed again.
    """
    require_root()
    ids = _host_ids(count, names)
    host_roles = _host_roles(ids, roles)
    if rate is not None:
        _check_rate(rate)
    if instance is not None:
        _check_instance(instance)
    state = Path(state_dir) if state_dir is not None else None
    if state is not None:
        _check_state_path(state)
    _check_proc()
    _check_tools(rate is not None)
    account = _ensure_user()
    _check_interpreter(account)

    instance, state = _claim(instance, state)
    try:
        return _build(instance, state, ids, host_roles, rate, db, account)
    except BaseException:
        with contextlib.suppress(Exception):
            down(state, instance=instance)
        raise


def load(state_dir: str | os.PathLike[str] | None = None, instance: int = 0) -> Testbed:
    """The testbed recorded in `state_dir` (default: the instance's); TestbedError if none."""
    state = Path(state_dir) if state_dir is not None else default_state_dir(instance)
    data = _read_state(state)
    if data is None:
        raise TestbedError(f"no testbed in {state}: start one with `skeleton testbed up`")
    return _testbed_from_state(state, data)


def status(state_dir: str | os.PathLike[str] | None = None, instance: int = 0
           ) -> list[HostStatus]:
    """One line per host: is its PID 1 alive, does its sshd answer with a banner."""
    tb = load(state_dir, instance)
    with ThreadPoolExecutor(max_workers=min(32, max(1, len(tb.hosts)))) as pool:
        reachable = list(pool.map(lambda h: _banner(h.ip, timeout=2.0), tb.hosts))
    return [
        HostStatus(id=h.id, ip=h.ip, namespace=h.namespace, pid=h.init_pid,
                   alive=_is_our_process(h.init_pid, h.namespace), reachable=ok)
        for h, ok in zip(tb.hosts, reachable, strict=True)
    ]


def down(state_dir: str | os.PathLike[str] | None = None, instance: int = 0) -> list[str]:
    """Remove the testbed: processes, namespaces, links, database, state dir.

    Works from state.json when it is there, and also sweeps leftovers of the instance by
    name (namespaces `sktbN-*`, links `skNh*` and `sktbN`, processes carrying our marker in
    those namespaces), so it is safe after a crash and safe to run twice. Found by name only,
    a thing is ours only when the state dir proves this instance was made from it (state.json,
    or the marker file `up` writes before it creates anything): without that proof, a bridge,
    namespace or link that merely bears the instance's names (someone else's, or another
    state dir's) is left, with a line `left ...` saying so. Returns what was removed (and
    left), one short line each.
    """
    require_root()
    state = Path(state_dir) if state_dir is not None else default_state_dir(instance)
    data = _read_state(state)
    if data is not None:
        instance = int(data["instance"])
    _check_instance(instance)
    removed: list[str] = []
    ours = data is not None or (state / _STATE_MARKER).exists()

    recorded = [_host_from_state(state, h) for h in (data or {}).get("hosts", [])]
    namespaces = {h.namespace for h in recorded}
    links = {h.veth for h in recorded}
    by_name = [*_our_namespaces(instance), *_our_links(instance)]
    if ours:
        namespaces |= set(_our_namespaces(instance))
        links |= set(_our_links(instance))
    elif by_name:
        removed.append(f"left {', '.join(sorted(by_name))}: no testbed state in {state}"
                       " proves them ours")

    # 1. Processes. Killing a host's PID 1 makes the kernel kill everything in its PID
    # namespace; killing the launcher's group takes the launcher and PID 1 together.
    victims: list[int] = []
    stopped = 0
    for h in recorded:
        pids = [pid for pid in (h.launcher_pid, h.init_pid)
                if pid and _is_our_process(pid, h.namespace)]
        if h.launcher_pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(h.launcher_pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        victims += pids
        stopped += bool(pids)
    leftovers = 0
    for pid, _ns in _marked_processes(namespaces):
        # Processes the state file does not know (crash during `up`, state file lost).
        if pid not in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            victims.append(pid)
            leftovers += 1
    for pid in victims:
        _reap(pid)
    if stopped:
        removed.append(f"stopped {stopped} host(s)")
    if leftovers:
        removed.append(f"killed {leftovers} leftover process(es)")

    # 2. The database, before its directory goes.
    db_dir = state / "db"
    if db_dir.is_dir():
        localdb.stop_postgres(db_dir)
        removed.append(f"stopped PostgreSQL in {db_dir}")

    # 3. Namespaces (their eth0 ends, hence the veth pairs, go with them) and links.
    existing_ns = set(_list_namespaces())
    commands = [f"netns del {ns}" for ns in sorted(namespaces) if ns in existing_ns]
    existing_links = set(_list_links())
    commands += [f"link del {ln}" for ln in sorted(links) if ln in existing_links]
    bridge = bridge_name(instance)
    if bridge in existing_links and ours:
        commands.append(f"link del {bridge}")
    elif bridge in existing_links:
        removed.append(f"left bridge {bridge}: no testbed state in {state} proves it ours"
                       f" (if it is a leftover: ip link del {bridge})")
    if commands:
        # -force: carry on past a veth that vanished with its namespace meanwhile.
        _run(["ip", "-force", "-batch", "-"], input="\n".join(commands) + "\n", check=False)
        removed += [c.replace("netns del", "namespace").replace("link del", "link")
                    for c in commands]

    # 4. The state dir, only if it is one of ours (never a directory someone passed by mistake).
    if (state / _STATE_MARKER).exists():
        shutil.rmtree(state, ignore_errors=True)
        removed.append(f"state dir {state}")
    return removed


def set_rate(testbed: Testbed, host_id: str, rate: str | None) -> Testbed:
    """Shape `host_id`'s link both ways to `rate` (tc tbf), or remove shaping with None."""
    require_root()
    host = testbed.host(host_id)
    if rate is not None:
        _check_rate(rate)
    _apply_rate(host.veth, None, rate)
    _apply_rate("eth0", host.namespace, rate)
    return _update_host(testbed, host_id, rate=rate)


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
    """Tell the host's PID 1 whether sshd should run (see _INIT_PY)."""
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


# ---------------------------------------------------------------------------- up, step by step


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


def _check_rate(rate: str) -> str:
    if not isinstance(rate, str) or not _RATE_RE.match(rate.lower()):
        raise UsageError(f"invalid rate {rate!r}: expected e.g. 200mbit, 10mbit, 1gbit")
    return rate


def _check_ip(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise UsageError(f"invalid IPv4 address {value!r}") from None


def _check_state_path(state: Path) -> None:
    # The path ends up in sshd_config and in `-o` option values: keep it boring.
    if not _SAFE_PATH_RE.match(str(state.absolute())):
        raise UsageError(
            f"testbed state dir {str(state)!r} must be an absolute path of letters, digits"
            " and . _ / + - only"
        )


def _check_proc() -> None:
    # Under `unshare --pid` without --mount-proc, /proc shows another PID namespace: every
    # pid we would read there belongs to someone else.
    try:
        own = os.readlink("/proc/self")
    except OSError:
        own = ""
    if own != str(os.getpid()):
        raise TestbedError(
            "/proc does not show this process's PID namespace: run under"
            " `unshare --pid --fork --mount-proc`"
        )


def _check_tools(need_tc: bool) -> None:
    tools = ["ip", "unshare", "nsenter", "ssh-keygen", "mount", "hostname"]
    if need_tc:
        tools.append("tc")
    missing = [t for t in tools if shutil.which(t, path=_PATH) is None]
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    if missing:
        raise TestbedError(f"missing {', '.join(missing)}: {_INSTALL_HINT}")


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


def _claim(instance: int | None, state: Path | None) -> tuple[int, Path]:
    """Take an instance: its state dir and its bridge. The bridge is the atomic claim."""
    if instance is not None:
        chosen = state or default_state_dir(instance)
        _claim_state_dir(chosen)
        problem = _claim_bridge(instance)
        if problem:
            _release_state_dir(chosen)
            raise TestbedError(problem)
        return instance, chosen
    if state is None and os.environ.get("SKELETON_TESTBED_DIR"):
        state = default_state_dir()  # one fixed directory, whatever the instance
    # Spread processes that start at the same moment over different instances.
    start = os.getpid() % len(AUTO_INSTANCES)
    candidates = [*AUTO_INSTANCES[start:], *AUTO_INSTANCES[:start]]
    if state is not None:
        _claim_state_dir(state)
    for candidate in candidates:
        chosen = state or default_state_dir(candidate)
        if state is None:
            try:
                _claim_state_dir(chosen)
            except TestbedError:
                continue
        if _claim_bridge(candidate) is None:
            return candidate, chosen
        if state is None:
            _release_state_dir(chosen)
    if state is not None:
        _release_state_dir(state)
    raise TestbedError("no free testbed instance: run `skeleton testbed down` on old ones")


def _claim_state_dir(state: Path) -> None:
    _check_private_dir(state)
    if _read_state(state) is not None or (state / _STATE_MARKER).exists():
        raise TestbedError(
            f"a testbed already exists in {state}: run `skeleton testbed down` first"
        )
    if state.exists() and (not state.is_dir() or any(state.iterdir())):
        raise TestbedError(f"testbed state dir {state} exists and is not empty")
    state.mkdir(parents=True, exist_ok=True)
    # Others must traverse it: PostgreSQL runs as `postgres` in STATE/db.
    os.chmod(state, 0o755)
    (state / _STATE_MARKER).write_text("skeleton testbed state; removed by `down`\n")


def _check_private_dir(state: Path) -> None:
    """Refuse a state dir (the default is a fixed name under /tmp) that another user made or
    can write to: it will hold the cluster's private key, and root writes into it."""
    try:
        st = state.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symlink"
    elif st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}, not by this user"
    elif st.st_mode & 0o022:
        problem = f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    else:
        return
    raise TestbedError(f"testbed state dir {state} {problem}: refusing it; remove it or give"
                       " another one (--dir, $SKELETON_TESTBED_DIR)")


def _release_state_dir(state: Path) -> None:
    (state / _STATE_MARKER).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        state.rmdir()


def _claim_bridge(instance: int) -> str | None:
    """Create the instance's bridge; return why not if the instance is in use."""
    leftovers = _our_namespaces(instance)
    if leftovers:
        return (f"testbed instance {instance} is in use (namespace {leftovers[0]} exists):"
                " run `skeleton testbed down` first or pick another instance")
    bridge = bridge_name(instance)
    proc = _run(["ip", "link", "add", bridge, "type", "bridge"], check=False)
    if proc.returncode != 0:
        if "exists" in proc.stderr:
            return (f"testbed instance {instance} is in use (bridge {bridge} exists):"
                    " run `skeleton testbed down` first or pick another instance")
        raise TestbedError(f"cannot create bridge {bridge}: {_last_line(proc.stderr)}")
    return None


def _build(
    instance: int,
    state: Path,
    ids: Sequence[str],
    roles: Mapping[str, tuple[str, ...]],
    rate: str | None,
    db: bool,
    account: pwd.struct_passwd,
) -> Testbed:
    gateway = _gateway(instance)
    hosts = tuple(
        TestbedHost(
            id=node_id, index=i, ip=_host_ip(instance, i),
            namespace=netns_name(instance, node_id), veth=veth_name(instance, i),
            roles=roles[node_id], dir=state / "hosts" / node_id, launcher_pid=0, init_pid=0,
            rate=rate,
        )
        for i, node_id in enumerate(ids, start=1)
    )
    tb = Testbed(instance=instance, state_dir=state, bridge=bridge_name(instance),
                 subnet=f"{SUBNET_PREFIX}.{instance}.0/24", gateway=gateway, hosts=hosts)
    # Recorded first so that `down` finds every name even if we die half-way.
    _write_state(tb)

    workers = min(16, len(hosts))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        controller_pub = _keygen(tb.identity_file, "skeleton-testbed-controller")
        keys = list(pool.map(_host_keys, hosts))
        host_pubs = {h.id: k[0] for h, k in zip(hosts, keys, strict=True)}
        node_pubs = [k[1] for k in keys]
        _write_controller_files(tb, host_pubs)
        list(pool.map(lambda h: _write_host_files(tb, h, controller_pub, node_pubs, host_pubs,
                                                  account), hosts))

        _make_network(tb)
        list(pool.map(lambda h: _configure_netns(tb, h), hosts))
        if rate is not None:
            for h in hosts:
                _apply_rate(h.veth, None, rate)
            list(pool.map(lambda h: _apply_rate("eth0", h.namespace, rate), hosts))

        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        launched = tuple(replace(h, launcher_pid=_launch(h)) for h in hosts)
        tb = replace(tb, hosts=launched)
        _write_state(tb)

        deadline = time.monotonic() + 30.0 + 0.2 * len(hosts)
        ready = list(pool.map(lambda h: _wait_banner(h.ip, deadline, h.launcher_pid),
                              launched))
    failed = [h for h, ok in zip(launched, ready, strict=True) if not ok]
    if failed:
        h = failed[0]
        raise TestbedError(
            f"{len(failed)} host(s) did not start, e.g. {h.id}: sshd: {_tail(h.sshd_log)};"
            f" launcher: {_tail(h.dir / 'launcher.log')}"
        )
    inits = _children_of([h.launcher_pid for h in launched])
    tb = replace(tb, hosts=tuple(replace(h, init_pid=inits.get(h.launcher_pid, 0))
                                 for h in launched))
    missing = [h.id for h in tb.hosts if not h.init_pid]
    if missing:
        raise TestbedError(f"cannot find the init process of {', '.join(missing)}")
    _write_state(tb)

    if db:
        pg = localdb.start_postgres(state / "db", listen=("127.0.0.1", gateway))
        tb = replace(tb, db=TestbedDatabase(dir=pg.base_dir, port=pg.port, pid=pg.pid,
                                            dsn=pg.dsn, host_dsn=pg.dsn_for(gateway)))
        _write_state(tb)
    _write_config(tb)
    if tb.db is not None:
        _seed_registry(tb)
    return tb


def _seed_registry(tb: Testbed) -> None:
    """With a DSN configured, commands take their nodes from the database only: create the
    schema and register the hosts, so the testbed is usable before any daemon runs. Each
    host gets its own credentials (what `skeleton nodes credentials ID --install` writes):
    a daemon never uses the operator's DSN of config.yaml."""
    from skeleton_app.config import load_config
    from skeleton_app.registry import import_nodes, init_schema, open_registry

    assert tb.db is not None
    init_schema(tb.db.dsn)
    settings = load_config(tb.config_path, env={})
    account = pwd.getpwnam(USER)
    with open_registry(settings) as registry:
        import_nodes(registry, [
            {"id": h.id, "host": h.ip, "roles": list(h.roles)} for h in tb.hosts
        ], source=str(tb.config_path))
        for host in tb.hosts:
            _write_node_dsn(host, registry.issue_credentials(host.id), account)


def _write_node_dsn(host: TestbedHost, dsn: str, account: pwd.struct_passwd) -> None:
    """The node's DSN at the default `registry.node_dsn_file` inside the host, 0600 from
    the start (it holds a password), owned by the node user."""
    owner = (account.pw_uid, account.pw_gid)
    path = host.home / NODE_DSN_FILE
    for parent in (path.parent.parent, path.parent):
        parent.mkdir(mode=0o700, exist_ok=True)
        os.chown(parent, *owner)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(dsn + "\n")
    os.chown(path, *owner)


def _keygen(path: Path, comment: str) -> str:
    """A new ed25519 key pair at `path`; returns the public key line."""
    path.unlink(missing_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.with_name(path.name + ".pub").read_text().strip()


def _host_keys(host: TestbedHost) -> tuple[str, str]:
    """(host key, node user key) public lines for one host."""
    (host.home / ".ssh").mkdir(parents=True, exist_ok=True)
    host_pub = _keygen(host.dir / "ssh_host_ed25519_key", f"{host.id} host key")
    node_pub = _keygen(host.home / ".ssh" / "id_ed25519", f"{USER}@{host.id}")
    return host_pub, node_pub


def _key_body(pub_line: str) -> str:
    """'ssh-ed25519 AAAA...' without the comment."""
    return " ".join(pub_line.split()[:2])


def _write_controller_files(tb: Testbed, host_pubs: Mapping[str, str]) -> None:
    # Keys are pinned per node id (ssh.py, HostKeyAlias): one entry by id, and one by
    # address for plain `ssh IP` and tools that do not know the ids (bench peers, pdsh).
    known = "".join(f"{h.id} {_key_body(host_pubs[h.id])}\n{h.ip} {_key_body(host_pubs[h.id])}\n"
                    for h in tb.hosts)
    _write(tb.known_hosts, known, 0o644)
    blocks = [
        f"# written by skeleton testbed up: ssh -F {tb.ssh_config_path} {tb.hosts[0].id}\n"
        "Host *\n"
        f"    User {USER}\n"
        f"    IdentityFile {tb.identity_file}\n"
        f"    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {tb.known_hosts}\n"
        f"    StrictHostKeyChecking yes\n"
        f"    BatchMode yes\n"
        f"    ConnectTimeout 10\n"
    ]
    blocks += [f"\nHost {h.id}\n    HostName {h.ip}\n" for h in tb.hosts]
    _write(tb.ssh_config_path, "".join(blocks), 0o644)
    _write(tb.state_dir / "hidden-command", _HIDDEN_COMMAND, 0o755)
    _write(tb.state_dir / "host-init.py", _INIT_PY, 0o644)


def _write_host_files(
    tb: Testbed,
    host: TestbedHost,
    controller_pub: str,
    node_pubs: Sequence[str],
    host_pubs: Mapping[str, str],
    account: pwd.struct_passwd,
) -> None:
    owner = (account.pw_uid, account.pw_gid)
    ssh_dir = host.home / ".ssh"
    # Node-to-node: every node key may log in everywhere, and every host key is known by
    # id and by address, so `ssh node-02` and `ssh 10.213.N.12` both verify strictly.
    _write(ssh_dir / "authorized_keys", "\n".join([controller_pub, *node_pubs]) + "\n", 0o600,
           owner)
    known = "".join(f"{h.id},{h.ip} {_key_body(host_pubs[h.id])}\n" for h in tb.hosts)
    _write(ssh_dir / "known_hosts", known, 0o644, owner)
    config = ["Host *\n    StrictHostKeyChecking yes\n    BatchMode yes\n"
              "    ConnectTimeout 10\n"]
    config += [f"\nHost {h.id}\n    HostName {h.ip}\n" for h in tb.hosts]
    _write(ssh_dir / "config", "".join(config), 0o644, owner)
    for name in ("id_ed25519", "id_ed25519.pub"):
        os.chown(ssh_dir / name, *owner)
    os.chmod(ssh_dir / "id_ed25519", 0o600)
    (host.home / "app").mkdir(exist_ok=True)
    for path in (host.home, ssh_dir, host.home / "app"):
        os.chown(path, *owner)
    os.chmod(host.home, 0o755)
    os.chmod(ssh_dir, 0o700)

    sshd_config = f"""\
# written by skeleton testbed up for {host.id}
ListenAddress {host.ip}
Port 22
HostKey {host.dir / "ssh_host_ed25519_key"}
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
PermitRootLogin no
AllowUsers {USER}
# Fan-out benchmarks hit one host with many handshakes at once (default 10:30:100).
MaxStartups 200:30:400
MaxSessions 64
PrintMotd no
PrintLastLog no
UseDNS no
X11Forwarding no
Subsystem sftp internal-sftp
LogLevel INFO
"""
    _write(host.sshd_config, sshd_config, 0o600)


def _make_network(tb: Testbed) -> None:
    """Bridge address, namespaces and veth pairs, in one `ip -batch` (the bridge exists)."""
    lines = [f"addr add {tb.gateway}/24 dev {tb.bridge}", f"link set {tb.bridge} up"]
    for h in tb.hosts:
        lines += [
            f"netns add {h.namespace}",
            f"link add {h.veth} type veth peer name eth0 netns {h.namespace}",
            f"link set {h.veth} master {tb.bridge} up",
        ]
    Path("/run/netns").mkdir(parents=True, exist_ok=True)
    _run(["ip", "-batch", "-"], input="\n".join(lines) + "\n")
    # The hosts' default route points at the gateway so that they reach the controller and
    # each other; it must never lead further. With forwarding off on the bridge (the input
    # interface decides) the kernel answers "unreachable" instead of routing a host's packet
    # out of the machine, even where net.ipv4.ip_forward is 1 (e.g. Docker hosts).
    Path(f"/proc/sys/net/ipv4/conf/{tb.bridge}/forwarding").write_text("0\n")


def _configure_netns(tb: Testbed, host: TestbedHost) -> None:
    lines = [
        "link set lo up",
        f"addr add {host.ip}/24 dev eth0",
        "link set eth0 up",
        f"route add default via {tb.gateway}",
    ]
    _run(["ip", "-n", host.namespace, "-batch", "-"], input="\n".join(lines) + "\n")


def _apply_rate(dev: str, namespace: str | None, rate: str | None) -> None:
    prefix = ["tc"] if namespace is None else ["tc", "-n", namespace]
    if rate is None:
        proc = _run([*prefix, "qdisc", "del", "dev", dev, "root"], check=False)
        # Deleting the default qdisc is refused with one of these: nothing to undo.
        if proc.returncode != 0 and not any(
            s in proc.stderr for s in ("handle of zero", "No such file", "Invalid handle")
        ):
            raise TestbedError(f"tc on {dev}: {_last_line(proc.stderr)}")
        return
    _run([*prefix, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
          "burst", DEFAULT_RATE_BURST, "latency", DEFAULT_RATE_LATENCY])


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
    with _children_lock:
        _children[proc.pid] = proc
    return proc.pid


def _write_config(tb: Testbed) -> None:
    config: dict[str, Any] = {
        "ssh": {
            "user": USER,
            "identity_file": str(tb.identity_file),
            "known_hosts": str(tb.known_hosts),
            "host_key_policy": "strict",
        },
        "app": {"dir": APP_DIR},
    }
    if tb.db is not None:
        config["registry"] = {"dsn": tb.db.host_dsn}
    config["daemon"] = {
        "manager": "process",
        # From the virtualenv `skeleton cluster bootstrap` makes in the host's app dir, as on
        # a real node. The hosts share /tmp with the controller, so the daemon reads this
        # very file (a real node reads the config.yaml deployed with the code).
        "command": (".venv/bin/python -m skeleton_app daemon run"
                    f" --config {shlex.quote(str(tb.config_path))}"),
    }
    config["deploy"] = _deploy_section(tb)
    project = _project_dir()
    if project is not None and (project / WHEELHOUSE / ".complete").is_file():
        # Wheels ./scripts/setup built while it had network: bootstrap needs no index.
        config["bootstrap"] = {"wheelhouse": str(project / WHEELHOUSE)}
    config["nodes"] = [{"id": h.id, "host": h.ip, "roles": list(h.roles)} for h in tb.hosts]
    header = (f"# written by `skeleton testbed up` (instance {tb.instance});"
              " removed by `skeleton testbed down`\n")
    _write(tb.config_path, header + yaml.safe_dump(config, sort_keys=False), 0o644)


def _hidden_dirs(host_dir: Path) -> list[str]:
    """What the hosts must not see of the controller: the checkout this package runs from
    and the virtualenv it runs in (when it is one); never a directory holding the host's
    own files (a state dir inside the checkout)."""
    hidden: list[str] = []
    candidates = [str(p) for p in [_project_dir()] if p is not None]
    if sys.prefix != sys.base_prefix:
        candidates.append(os.path.realpath(sys.prefix))
    own = os.path.realpath(host_dir)
    for path in candidates:
        inside = any(path == h or path.startswith(h + "/") for h in hidden)
        if not inside and not (own + "/").startswith(path + "/"):
            hidden.append(path)
    return hidden


def _project_dir() -> Path | None:
    """The checkout this package runs from (an editable install), else None."""
    project = Path(__file__).resolve().parents[2]
    return project if (project / "pyproject.toml").is_file() else None


def _deploy_section(tb: Testbed) -> dict[str, Any]:
    """Always an explicit, safe `deploy.source`: a relative one would mean the state dir,
    which holds the controller's private key, the host keys and state.json. From a checkout:
    the checkout; else a small app dir of the tour's own (STATE/app)."""
    from skeleton_app.config import DeploySettings

    project = _project_dir()
    if project is not None:
        return {"source": str(project), "exclude": [
            *DeploySettings().exclude, ".pytest_cache/", ".ruff_cache/", ".mypy_cache/",
            "*.egg-info/", "bench/", "collected_logs/", f"{WHEELHOUSE}/", "build/"]}
    app = tb.state_dir / "app"
    app.mkdir(mode=0o755, exist_ok=True)
    _write(app / "README.txt", "A tiny app deployed by the skeleton testbed tour.\n", 0o644)
    return {"source": str(app)}


# ---------------------------------------------------------------------------- state file


def _write_state(tb: Testbed) -> None:
    data = {
        "version": _STATE_VERSION,
        "instance": tb.instance,
        "bridge": tb.bridge,
        "subnet": tb.subnet,
        "gateway": tb.gateway,
        "hosts": [
            {"id": h.id, "index": h.index, "ip": h.ip, "namespace": h.namespace,
             "veth": h.veth, "roles": list(h.roles), "launcher_pid": h.launcher_pid,
             "init_pid": h.init_pid, "rate": h.rate}
            for h in tb.hosts
        ],
        "db": None if tb.db is None else {
            "dir": str(tb.db.dir), "port": tb.db.port, "pid": tb.db.pid, "dsn": tb.db.dsn,
            "host_dsn": tb.db.host_dsn,
        },
    }
    path = tb.state_dir / "state.json"
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the DB password
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


def _read_state(state: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state / "state.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != _STATE_VERSION:
        return None
    return data


def _host_from_state(state: Path, raw: Mapping[str, Any]) -> TestbedHost:
    return TestbedHost(
        id=str(raw["id"]), index=int(raw["index"]), ip=str(raw["ip"]),
        namespace=str(raw["namespace"]), veth=str(raw["veth"]),
        roles=tuple(str(r) for r in raw["roles"]), dir=state / "hosts" / str(raw["id"]),
        launcher_pid=int(raw["launcher_pid"]), init_pid=int(raw["init_pid"]),
        rate=raw.get("rate"),
    )


def _testbed_from_state(state: Path, data: Mapping[str, Any]) -> Testbed:
    raw_db = data.get("db")
    db = None
    if raw_db:
        db = TestbedDatabase(dir=Path(raw_db["dir"]), port=int(raw_db["port"]),
                             pid=int(raw_db["pid"]), dsn=str(raw_db["dsn"]),
                             host_dsn=str(raw_db["host_dsn"]))
    return Testbed(
        instance=int(data["instance"]), state_dir=state, bridge=str(data["bridge"]),
        subnet=str(data["subnet"]), gateway=str(data["gateway"]),
        hosts=tuple(_host_from_state(state, h) for h in data["hosts"]), db=db,
    )


def _update_host(tb: Testbed, host_id: str, **changes: Any) -> Testbed:
    """Read-modify-write state.json under a lock (tests may call injectors concurrently)."""
    with open(tb.state_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fresh = load(tb.state_dir)
        hosts = tuple(replace(h, **changes) if h.id == host_id else h for h in fresh.hosts)
        fresh = replace(fresh, hosts=hosts)
        _write_state(fresh)
    return fresh


# ---------------------------------------------------------------------------- processes


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


# ---------------------------------------------------------------------------- network


def _list_namespaces() -> list[str]:
    proc = _run(["ip", "netns", "list"], check=False)
    # Lines look like "sktb3-node-01 (id: 4)".
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _our_namespaces(instance: int) -> list[str]:
    prefix = netns_name(instance, "")
    return [ns for ns in _list_namespaces() if ns.startswith(prefix)]


def _list_links() -> list[str]:
    proc = _run(["ip", "-o", "link", "show"], check=False)
    names = []
    for line in proc.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def _our_links(instance: int) -> list[str]:
    veth = re.compile(rf"^sk{instance}h[0-9]+$")
    return [name for name in _list_links() if veth.match(name)]


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


# ---------------------------------------------------------------------------- helpers


def _run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                              timeout=timeout, check=False, cwd="/",
                              env={**os.environ, "PATH": _PATH, "LC_ALL": "C.UTF-8"})
    except FileNotFoundError:
        raise TestbedError(f"{argv[0]} not found: {_INSTALL_HINT}") from None
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"`{shlex.join(argv)}` timed out after {timeout:.0f}s") from exc
    if check and proc.returncode != 0:
        raise TestbedError(
            f"`{_short(argv)}` failed (exit {proc.returncode}):"
            f" {_last_line(proc.stderr or proc.stdout)}"
        )
    return proc


def _short(argv: Sequence[str]) -> str:
    text = shlex.join(argv)
    return text if len(text) <= 200 else text[:200] + "..."


def _write(path: Path, text: str, mode: int, owner: tuple[int, int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-3:]) or "(empty log)"

