"""A throwaway PostgreSQL for the tests, the demo and `skeleton testbed up --db`.

    pg = start_postgres("/tmp/skeleton-pg", listen=("127.0.0.1", "10.213.0.1"))
    pg.dsn                     # postgresql://skeleton:...@127.0.0.1:PORT/skeleton
    pg.dsn_for("10.213.0.1")   # the same database as seen from the test hosts
    pg.stop()                  # or stop_postgres(base_dir): safe twice and after a crash

Layout of `base_dir` (owned by the `postgres` user when we run as root, because initdb
refuses to run as root):

    data/          the cluster (initdb), its postmaster.pid holds the host-side pid
    postgres.log   server log
    state.json     port, listen addresses, passwords (mode 0600): lets a second process
                   (`testbed status`, `testbed down`) find and stop the server

Every TCP connection authenticates with a password (scram-sha-256): the server may listen on
a bridge address that other local network namespaces reach, so nothing is `trust`. There is
no Unix socket (its path would depend on `base_dir` and could exceed the 107-byte limit).
The server listens only on the addresses it is given.

`$SKELETON_PG_TEMPLATE_DIR` (optional) names a directory where the first new cluster's initdb
result is kept: every later new cluster is a copy of it (about 1 s instead of initdb's 3-10
s), with its own superuser password set right after it starts. The test suite sets it for its
session; a user bringing testbeds up and down often may set it too. It must be a directory the
service user may traverse (e.g. under /tmp).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from skeleton_app.errors import TestbedError

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin",
                     "/usr/lib/postgresql/15/bin")
SERVICE_USER = "postgres"  # the OS user that owns and runs the cluster when we are root
APP_ROLE = "skeleton"  # owner of the `skeleton` database; what the product connects as
APP_DATABASE = "skeleton"
START_TIMEOUT = 60.0  # seconds for initdb / pg_ctl start on a slow, busy 2-core machine
STOP_TIMEOUT = 30.0
TEMPLATE_ENV = "SKELETON_PG_TEMPLATE_DIR"


@dataclass(frozen=True, slots=True)
class LocalPostgres:
    """A running throwaway PostgreSQL. All addresses it listens on accept the same roles."""

    base_dir: Path
    port: int
    pid: int  # the postmaster's pid, as seen from this (the host's) pid namespace
    listen: tuple[str, ...]
    password: str = field(repr=False)  # of APP_ROLE
    admin_password: str = field(repr=False)  # of the superuser `postgres`
    database: str = APP_DATABASE
    user: str = APP_ROLE

    @property
    def dsn(self) -> str:
        """DSN of the application database on the first listen address."""
        return self.dsn_for(self.listen[0])

    @property
    def admin_dsn(self) -> str:
        """Superuser DSN (tests use it to create scratch databases)."""
        return _dsn(self.listen[0], self.port, "postgres", self.admin_password, "postgres")

    def dsn_for(self, host: str, *, database: str | None = None) -> str:
        """DSN of the database as reached through `host`, one of the listen addresses."""
        if host not in self.listen:
            raise ValueError(
                f"PostgreSQL in {self.base_dir} does not listen on {host!r}"
                f" (it listens on {', '.join(self.listen)})"
            )
        return _dsn(host, self.port, self.user, self.password, database or self.database)

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Create a database owned by the application role; return its DSN. Empty, or a copy
        of database `template` (which nobody may be connected to meanwhile)."""
        statement = sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(self.user))
        if template is not None:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        _admin_sql(self, statement)
        return self.dsn_for(self.listen[0], database=name)

    def drop_database(self, name: str) -> None:
        _admin_sql(self, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))

    def running(self) -> bool:
        return _postmaster_pid(self.base_dir / "data") == self.pid

    def stop(self) -> None:
        stop_postgres(self.base_dir)


def _dsn(host: str, port: int, user: str, password: str, database: str) -> str:
    shown_host = f"[{host}]" if ":" in host else host
    return f"postgresql://{quote(user)}:{quote(password, safe='')}@{shown_host}:{port}/{database}"


def find_pg_bin() -> Path:
    """The directory holding initdb and pg_ctl ($SKELETON_PG_BIN, Debian's layout, or PATH)."""
    env = os.environ.get("SKELETON_PG_BIN")
    candidates = [env] if env else []
    candidates += PG_BIN_CANDIDATES
    for cand in candidates:
        if cand and (Path(cand) / "initdb").is_file() and (Path(cand) / "pg_ctl").is_file():
            return Path(cand)
    found = shutil.which("pg_ctl")
    if found and (Path(found).parent / "initdb").is_file():
        return Path(found).parent
    raise TestbedError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install them with"
        " `apt-get install -y postgresql` or set SKELETON_PG_BIN"
    )


def start_postgres(
    base_dir: str | os.PathLike[str],
    *,
    listen: Sequence[str] = ("127.0.0.1",),
    port: int | None = None,
    allow: Sequence[str] | None = None,
) -> LocalPostgres:
    """Start (initialising on first use) a PostgreSQL in `base_dir`; wait until it accepts.

    `listen` are the only addresses the server binds. `allow` are the client networks
    (CIDR) allowed to log in; by default loopback plus the network of each non-loopback
    listen address as configured on this machine's interfaces (so the test hosts behind a
    bridge reach it through the bridge's gateway address). `port=None` picks a free port.
    A `base_dir` that was used before keeps its data and passwords. If the server is already
    running there with the same addresses, it is returned as is.
    """
    base = Path(base_dir).absolute()
    listen = tuple(listen)
    if not listen:
        raise ValueError("listen must name at least one address")
    for addr in listen:
        ipaddress.ip_address(addr)  # ValueError on a hostname: we bind exactly what is asked
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"invalid port {port}")

    running = load(base)
    if running is not None:
        if running.listen != listen or (port is not None and running.port != port):
            raise TestbedError(
                f"PostgreSQL already running in {base} on {','.join(running.listen)}"
                f" port {running.port}; stop it first"
            )
        return running

    bindir = find_pg_bin()
    owner = _service_user()
    base.mkdir(parents=True, exist_ok=True)
    _check_reachable(base, owner)
    state = _read_state(base)
    password = state.get("password") or secrets.token_urlsafe(18)
    admin_password = state.get("admin_password") or secrets.token_urlsafe(18)
    data = base / "data"

    _wait_stale_postmaster(data)
    first_password = admin_password  # the superuser's password when the server starts
    if not (data / "PG_VERSION").is_file():
        copied = _copy_template(bindir, data, owner)
        if copied is None:
            _initdb(bindir, data, owner, admin_password)
        else:
            first_password = copied
        fresh = True
    else:
        fresh = False
    clients = list(allow) if allow is not None else _default_clients(listen)
    _write_hba(data, clients, owner)
    log = base / "postgres.log"
    attempts = 1 if port is not None else 5
    last_error = ""
    for _ in range(attempts):
        chosen = port if port is not None else _free_port(listen)
        _write_conf(data, listen, chosen, owner)
        state = {"port": chosen, "listen": list(listen), "password": password,
                 "admin_password": admin_password}
        _write_state(base, state)
        ok, last_error = _pg_ctl_start(bindir, data, log, owner)
        if ok:
            break
        # Another process may have taken the port between our probe and the bind: retry.
    else:
        raise TestbedError(f"PostgreSQL in {base} did not start: {last_error}")

    pid = _postmaster_pid(data)
    if pid is None:
        raise TestbedError(f"PostgreSQL in {base} started but wrote no postmaster.pid")
    pg = LocalPostgres(base_dir=base, port=state["port"], pid=pid, listen=listen,
                       password=password, admin_password=first_password)
    try:
        _wait_ready(pg)
        if first_password != admin_password:
            # A copy of the template: the template's superuser password is not this one's.
            _admin_sql(pg, sql.SQL("ALTER ROLE postgres PASSWORD {}").format(
                sql.Literal(admin_password)))
            pg = replace(pg, admin_password=admin_password)
        if fresh:
            # Utility statements take no bind parameters: compose with quoted literals.
            # CREATEROLE: `skeleton nodes credentials` gives each node a role of its own.
            _admin_sql(pg, sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                sql.Identifier(APP_ROLE), sql.Literal(password)))
            _admin_sql(pg, sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(APP_DATABASE), sql.Identifier(APP_ROLE)))
    except BaseException:
        stop_postgres(base)
        raise
    return pg


def load(base_dir: str | os.PathLike[str]) -> LocalPostgres | None:
    """The PostgreSQL running in `base_dir`, or None when none runs there."""
    base = Path(base_dir).absolute()
    pid = _postmaster_pid(base / "data")
    state = _read_state(base)
    if pid is None or not state:
        return None
    return LocalPostgres(base_dir=base, port=int(state["port"]), pid=pid,
                         listen=tuple(state["listen"]), password=state["password"],
                         admin_password=state["admin_password"])


def stop_postgres(base_dir: str | os.PathLike[str], *, timeout: float = STOP_TIMEOUT) -> None:
    """Stop the PostgreSQL in `base_dir`. Safe to call twice, after a crash, or on no server."""
    base = Path(base_dir).absolute()
    data = base / "data"
    pid = _postmaster_pid(data)
    if pid is None:
        return
    # SIGINT is PostgreSQL's "fast shutdown": roll back sessions, checkpoint, exit. We signal
    # the pid ourselves rather than run pg_ctl so that this also works without the binaries.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    if _wait_gone(pid, timeout):
        return
    # Immediate shutdown, then the hard way; children die with the postmaster.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)
    if _wait_gone(pid, 5.0):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, 5.0):
        raise TestbedError(f"PostgreSQL (pid {pid}) in {base} did not stop")


# ---------------------------------------------------------------------------- internals


def _service_user() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as: `postgres` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise TestbedError(
            f"running as root but there is no {SERVICE_USER!r} user to run PostgreSQL as"
            " (initdb refuses root): install the postgresql package"
        ) from None


def _check_reachable(base: Path, owner: pwd.struct_passwd | None) -> None:
    """Make `base` the service user's, and fail clearly if a parent directory locks it out."""
    if owner is None:
        return
    # Only `base` itself: what initdb creates below it is the service user's already.
    os.chown(base, owner.pw_uid, owner.pw_gid)
    os.chmod(base, 0o700)
    for parent in base.parents:
        st = parent.stat()
        if st.st_uid != owner.pw_uid and not st.st_mode & 0o001:
            raise TestbedError(
                f"PostgreSQL runs as {owner.pw_name!r} but cannot enter {parent}"
                f" (mode {oct(st.st_mode & 0o777)}): put its directory under /tmp or another"
                " directory others may traverse"
            )


def _run(argv: Sequence[str], owner: pwd.struct_passwd | None, *, timeout: float,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    kwargs: dict[str, Any] = {}
    if owner is not None:
        kwargs.update(user=owner.pw_uid, group=owner.pw_gid, extra_groups=[])
        env = {"PATH": "/usr/bin:/bin", "HOME": owner.pw_dir, "LC_ALL": "C.UTF-8",
               "LANG": "C.UTF-8"}
    else:
        env = {**os.environ, "LC_ALL": "C.UTF-8"}
    env.pop("PGDATA", None)
    try:
        return subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, env=env,
            check=False, cwd="/", **kwargs,
        )
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"{Path(argv[0]).name} timed out after {timeout:.0f}s") from exc
    except OSError as exc:
        raise TestbedError(f"cannot run {argv[0]}: {exc}") from exc


def _initdb(bindir: Path, data: Path, owner: pwd.struct_passwd | None, password: str) -> None:
    data.mkdir(mode=0o700, exist_ok=True)
    if owner is not None:
        os.chown(data, owner.pw_uid, owner.pw_gid)
    pwfile = data.parent / ".pwfile"
    pwfile.write_text(password + "\n")
    os.chmod(pwfile, 0o600)
    if owner is not None:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    try:
        proc = _run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"],
            owner, timeout=START_TIMEOUT,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise TestbedError(f"initdb failed in {data}: {_last_line(proc.stderr or proc.stdout)}")


def _copy_template(bindir: Path, data: Path, owner: pwd.struct_passwd | None) -> str | None:
    """Fill the empty `data` with a copy of the kept initdb result ($SKELETON_PG_TEMPLATE_DIR,
    made here on first use); returns the copy's superuser password, or None when no template
    directory is set (then the caller runs initdb)."""
    root = os.environ.get(TEMPLATE_ENV)
    if not root:
        return None
    # One template per server version and service user (its files belong to that user).
    template = Path(root) / f"{bindir.parent.name}-{owner.pw_uid if owner else os.geteuid()}"
    if not (template / "data" / "PG_VERSION").is_file():
        building = template.with_name(f"{template.name}.{os.getpid()}.tmp")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        if owner is not None:
            os.chown(building, owner.pw_uid, owner.pw_gid)
        password = secrets.token_urlsafe(18)
        _initdb(bindir, building / "data", owner, password)
        (building / "password").write_text(password)
        os.chmod(building / "password", 0o600)
        try:
            building.rename(template)  # atomic: a concurrent first user keeps its own
        except OSError:
            shutil.rmtree(building, ignore_errors=True)
    data.mkdir(mode=0o700, exist_ok=True)
    if owner is not None:
        os.chown(data, owner.pw_uid, owner.pw_gid)
    # As root: -a keeps the service user's ownership and initdb's modes.
    proc = subprocess.run(["cp", "-a", "--", f"{template / 'data'}/.", str(data)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise TestbedError(f"cannot copy the PostgreSQL template {template}:"
                           f" {_last_line(proc.stderr)}")
    return (template / "password").read_text().strip()


def _default_clients(listen: Sequence[str]) -> list[str]:
    nets = ["127.0.0.1/32", "::1/128"]
    for addr in listen:
        ip = ipaddress.ip_address(addr)
        if ip.is_loopback:
            continue
        nets.append(_interface_network(addr) or f"{addr}/{ip.max_prefixlen}")
    return nets


def _interface_network(addr: str) -> str | None:
    """The network (CIDR) of the interface that carries `addr`, from `ip -j addr`."""
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
        links = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    for link in links:
        for info in link.get("addr_info", []):
            if info.get("local") == addr:
                net = ipaddress.ip_network(f"{addr}/{info['prefixlen']}", strict=False)
                return str(net)
    return None


def _write_hba(data: Path, clients: Sequence[str], owner: pwd.struct_passwd | None) -> None:
    lines = ["# written by skeleton_app.testing.localdb: password logins from these networks only"]
    for net in clients:
        ipaddress.ip_network(net, strict=False)  # ValueError on garbage
        lines.append(f"host all all {net} scram-sha-256")
    _write_owned(data / "pg_hba.conf", "\n".join(lines) + "\n", owner)


def _write_conf(data: Path, listen: Sequence[str], port: int,
                owner: pwd.struct_passwd | None) -> None:
    conf = {
        "listen_addresses": ",".join(listen),
        "port": str(port),
        "unix_socket_directories": "",
        "max_connections": "200",
        # A throwaway database: durability buys nothing and costs seconds per test run.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "logging_collector": "off",
        "log_min_messages": "warning",
        "log_connections": "off",
    }
    text = "".join(f"{key} = '{value}'\n" for key, value in conf.items())
    # postgresql.auto.conf is read last and overrides postgresql.conf; initdb leaves it empty.
    _write_owned(data / "postgresql.auto.conf", text, owner)


def _write_owned(path: Path, text: str, owner: pwd.struct_passwd | None) -> None:
    path.write_text(text)
    os.chmod(path, 0o600)
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)


def _read_state(base: Path) -> dict[str, Any]:
    try:
        data = json.loads((base / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(base: Path, state: dict[str, Any]) -> None:
    path = base / "state.json"
    tmp = base / "state.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(state, fh)
    os.replace(tmp, path)


def _free_port(listen: Sequence[str]) -> int:
    """A port that is free on every listen address right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if all(_port_free(addr, port) for addr in listen):
            return port
    raise TestbedError("no free TCP port found for PostgreSQL")


def _port_free(addr: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((addr, port))
        except OSError:
            return False
    return True


def _pg_ctl_start(bindir: Path, data: Path, log: Path,
                  owner: pwd.struct_passwd | None) -> tuple[bool, str]:
    log.touch()
    if owner is not None:
        os.chown(log, owner.pw_uid, owner.pw_gid)
    # A stale postmaster.pid left by a crash is handled by the server itself; `-w` waits
    # until it accepts connections (or fails), `-t` bounds that wait.
    proc = _run(
        [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
         "-t", str(int(START_TIMEOUT)), "start"],
        owner, timeout=START_TIMEOUT + 10,
    )
    if proc.returncode == 0:
        return True, ""
    return False, _log_tail(log) or _last_line(proc.stderr or proc.stdout)


def _postmaster_pid(data: Path) -> int | None:
    """The live postmaster's pid from data/postmaster.pid, or None (absent, stale, garbage)."""
    try:
        first = (data / "postmaster.pid").read_text().split("\n", 1)[0].strip()
        pid = int(first)
    except (OSError, ValueError):
        return None
    if pid <= 1:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    # Guard against pid reuse after a crash: it must be a postgres serving this data dir.
    if not cmdline or not cmdline[0].endswith(b"postgres") or str(data).encode() not in cmdline:
        return None
    return pid


def _wait_stale_postmaster(data: Path, timeout: float = 10.0) -> None:
    """After a crash, wait until the dead postmaster named in postmaster.pid is reaped.

    PostgreSQL refuses to start while that pid exists at all, and a killed postmaster stays
    a zombie until its parent (often pid 1) reaps it. We never delete the file ourselves:
    it also guards against orphaned backends still attached to the old shared memory.
    """
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout
    while pid > 1 and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie has exited; only its parent's wait() remains (e.g. when we are that parent).
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _connect_admin(pg: LocalPostgres, timeout: float = 5.0) -> psycopg.Connection[Any]:
    return psycopg.connect(pg.admin_dsn, connect_timeout=max(1, int(timeout)), autocommit=True)


def _wait_ready(pg: LocalPostgres) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with _connect_admin(pg):
                return
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.1)
    raise TestbedError(f"PostgreSQL in {pg.base_dir} does not accept connections: {last}")


def _admin_sql(pg: LocalPostgres, statement: sql.Composed) -> None:
    try:
        with _connect_admin(pg) as conn:
            conn.execute(statement)
    except psycopg.Error as exc:
        raise TestbedError(f"PostgreSQL in {pg.base_dir}: {exc}") from exc


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _log_tail(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-3:])
