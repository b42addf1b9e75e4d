"""The testbed as a value: hosts, database, names and addresses, and STATE/state.json."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from skeleton_app.errors import SelectionError, TestbedError, UsageError

USER = "skeleton"  # the login user on every test host
HOME = "/home/skeleton"
APP_DIR = "/home/skeleton/app"
SUBNET_PREFIX = "10.213"  # 10.213.INSTANCE.0/24: nothing else on these machines uses it
MAX_INSTANCE = 200
AUTO_INSTANCES = range(20, MAX_INSTANCE + 1)  # `instance=None` claims one of these
FIRST_HOST_OCTET = 11  # node-01 is .11, the gateway .1
MAX_HOSTS = 254 - FIRST_HOST_OCTET + 1
DEFAULT_COUNT = 3
MARKER = "skeleton-testbed-host"  # an argv element of every launcher and init we start
_STATE_MARKER = ".skeleton-testbed"
_STATE_VERSION = 1


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


def load(state_dir: str | os.PathLike[str] | None = None, instance: int = 0) -> Testbed:
    """The testbed recorded in `state_dir` (default: the instance's); TestbedError if none."""
    state = Path(state_dir) if state_dir is not None else default_state_dir(instance)
    data = _read_state(state)
    if data is None:
        raise TestbedError(f"no testbed in {state}: start one with `skeleton testbed up`")
    return _testbed_from_state(state, data)


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
