"""The node daemon (`skeleton daemon run`, or `python -m skeleton_app.agent`).

What `skeleton cluster daemon start` starts on every node. It:

1. works out which node it is: `$SKELETON_NODE_ID` (set by daemon control), else the config
   entry whose id is this machine's hostname;
2. registers that node in the registry: a new row lands `pending` until an operator approves
   it; an existing row only gets its capabilities (CPU count, memory, GPUs) refreshed, never
   its host, app_dir, roles or state. It connects only with the node's own credentials
   (`$SKELETON_NODE_DSN`, else `registry.node_dsn_file`, written by `skeleton nodes
   credentials ID --install`), so PostgreSQL itself confines it to its own row. It never uses
   `registry.dsn` / `SKELETON_DATABASE_URL` (the operator's, which may rewrite every row),
   and checks on every connection that its role is this node's own, else it refuses the DSN.
   Without credentials it serves /health only and says once, in its log, what to run;
3. sends a heartbeat every few seconds (last_seen, load, memory, disk, GPUs, code_version);
4. answers `GET /health` on the node's api_port, on the node's own cluster address (see
   `Agent._bind`): without a token just `{"status": "ok"}` (a liveness bit); with
   `Authorization: Bearer TOKEN` the details (node id, pid, started_at, uptime, code
   version, skeleton_app version, registry state), which rolling restarts use. The token is
   `daemon.health_token`, else the one in the token file (kept across restarts), else a
   random one; it is written to
   `<app_dir>/.skeleton-deploy/health-token` (0600) for the node's own user (health.sh);
5. on SIGTERM (or SIGINT) marks itself stopped and exits 0.

The registry may be down, at start or at any time later: the daemon keeps running and keeps
answering /health, logs one line per change of the registry's state (never one per failed
attempt), retries with exponential backoff and resumes heartbeats when it returns.

It logs to `<logs_dir>/skeleton-daemon.log`, one line per event with an ISO 8601 UTC timestamp.
daemon control already sends the daemon's stdout/stderr to that same file, so the daemon
writes to the file itself and adds a stderr handler only when stderr is something else (a
terminal): no line appears twice.

Dependency-light on purpose: the standard library's http.server in a thread, no framework.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from skeleton_app import __version__, gpu, layout
from skeleton_app.config import Settings, load_config
from skeleton_app.errors import ConfigError, ForeignRoleError, RegistryError, SkeletonError
from skeleton_app.nodes import Node, validate_host, validate_node_id
from skeleton_app.registry import PostgresRegistry, Registry, open_registry, parse_dsn

log = logging.getLogger("skeleton_app.agent")

DEFAULT_INTERVAL = 5.0  # seconds between heartbeats
MAX_BACKOFF = 30.0  # seconds between attempts while the registry is down
GPU_TIMEOUT = 10.0  # nvidia-smi can hang on a wedged driver
TREE_DIGEST_MAX_FILES = 20_000  # beyond this the app dir holds data, not code: stop hashing
# Environment knobs (the config file has no section for these yet):
ENV_NODE_ID = "SKELETON_NODE_ID"
ENV_NODE_HOST = "SKELETON_NODE_HOST"  # the node's address when config.yaml does not list it
ENV_INTERVAL = "SKELETON_HEARTBEAT_INTERVAL"
ENV_HEALTH_BIND = "SKELETON_HEALTH_BIND"  # overrides daemon.health_bind (older name)
ENV_NODE_DSN = "SKELETON_NODE_DSN"  # the node's own DSN; else registry.node_dsn_file


# ------------------------------------------------------------------------ who am I


def resolve_node(settings: Settings, *, env: Mapping[str, str] | None = None,
                 hostname: str | None = None) -> Node:
    """This machine's node: `$SKELETON_NODE_ID` or the hostname, looked up in config.yaml.

    A node missing from the config's `nodes:` (a registry-only setup) can still run: its
    address comes from `$SKELETON_NODE_HOST`, else from the route towards the registry.
    """
    env = os.environ if env is None else env
    hostname = hostname or socket.gethostname()
    wanted = env.get(ENV_NODE_ID) or ""
    if wanted:
        try:
            validate_node_id(wanted)
        except ValueError as exc:
            raise ConfigError(str(exc), source=ENV_NODE_ID) from None
        candidates = [wanted]
    else:
        candidates = [hostname, hostname.split(".", 1)[0]]
    for candidate in candidates:
        node = settings.node(candidate)
        if node is not None:
            return node
    node_id = candidates[0] if wanted else candidates[-1]
    try:
        validate_node_id(node_id)
    except ValueError as exc:
        raise ConfigError(f"cannot name this node after the hostname: {exc}; set"
                          f" {ENV_NODE_ID}", source="hostname") from None
    host = env.get(ENV_NODE_HOST) or _address_towards_registry(settings)
    if not host:
        known = ", ".join(n.id for n in settings.nodes) or "none"
        raise ConfigError(
            f"node {node_id!r} is not in the nodes: list (known: {known}), and its address is"
            f" unknown: add it to config.yaml or set {ENV_NODE_HOST}",
            source=settings.source or "config",
        )
    try:
        validate_host(host)
    except ValueError as exc:
        raise ConfigError(str(exc), source=ENV_NODE_HOST) from None
    return Node(id=node_id, host=host, port=settings.ssh.port, user=settings.ssh.user,
                app_dir=settings.app.dir, identity_file=settings.ssh.identity_file,
                api_port=settings.daemon.api_port, name=node_id)


def _address_towards_registry(settings: Settings) -> str | None:
    """Our source address on the route to the database host (a UDP connect sends nothing)."""
    if not settings.registry.dsn:
        return None
    try:
        target = parse_dsn(settings.registry.dsn)
        host = target.host.split(",")[0]
        port = int(target.port.split(",")[0])
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, port))
            address = str(probe.getsockname()[0])
    except (RegistryError, OSError, ValueError):
        return None
    return None if ipaddress.ip_address(address).is_loopback else address


# ------------------------------------------------------------------------ facts


def code_version(app_dir: str | os.PathLike[str], *, exclude: tuple[str, ...] = ()) -> str:
    """What code runs here: the deploy digest's version, else the git revision, else a digest
    of the tree (`tree:` + 16 hex). Computed once at start: it is what this process runs."""
    root = Path(app_dir)
    try:
        first = (root / layout.DIGEST_FILE).read_text().split(maxsplit=1)
        if first and first[0].isalnum():
            return first[0][:64]
    except OSError:
        pass
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        proc = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
        rev = proc.stdout.strip()
        if proc.returncode == 0 and rev.isalnum():
            return f"git:{rev}"
    return "tree:" + tree_digest(root, exclude=exclude)[:16]


def tree_digest(root: Path, *, exclude: tuple[str, ...] = ()) -> str:
    """sha256 over the relative paths and contents of the files under `root` (sorted)."""
    skip_dirs = {".git", ".venv", "__pycache__", layout.DEPLOY_DIR, "node_modules"}
    skip_dirs.update(p.strip("/") for p in exclude if p.endswith("/"))
    h = hashlib.sha256(b"skeleton-agent-tree/1\0")
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        for name in sorted(filenames):
            if name.endswith(".pyc"):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink():
                    with path.open("rb") as fh:
                        while chunk := fh.read(1 << 20):
                            h.update(chunk)
            count += 1
            if count >= TREE_DIGEST_MAX_FILES:
                return h.hexdigest()
    return h.hexdigest()


def read_meminfo() -> dict[str, int]:
    """MemTotal and MemAvailable in bytes (empty when /proc/meminfo is unreadable)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def gpu_report() -> gpu.GpuReport:
    """nvidia-smi's view of the GPUs (the same query and parser as the status probe)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return gpu.GpuReport.missing()
    try:
        proc = subprocess.run([exe, *gpu.QUERY_ARGS], capture_output=True, text=True,
                              timeout=GPU_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return gpu.GpuReport.failed(f"nvidia-smi did not answer within {GPU_TIMEOUT:g}s")
    except OSError as exc:
        return gpu.GpuReport.failed(f"cannot run nvidia-smi: {exc.strerror}")
    return gpu.report_from_command(proc.returncode, proc.stdout or proc.stderr)


def _gpu_json(report: gpu.GpuReport) -> dict[str, Any]:
    return {
        "state": report.state.value,
        "gpus": [dataclasses.asdict(g) for g in report.gpus],
        "error": report.error,
    }


def capabilities(report: gpu.GpuReport | None = None) -> dict[str, Any]:
    """What the node can do, registered once at start."""
    report = report or gpu_report()
    mem = read_meminfo()
    return {
        "cpu_count": os.cpu_count(),
        "mem_total": mem.get("MemTotal"),
        "gpus": [{"name": g.name, "memory_total_mib": g.memory_total_mib, "uuid": g.uuid}
                 for g in report.gpus],
        "gpu_state": report.state.value,
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "skeleton_app": __version__,
    }


def metrics(app_dir: str) -> dict[str, Any]:
    """One heartbeat's worth of facts, named like the status probe's fields."""
    mem = read_meminfo()
    out: dict[str, Any] = {
        "load": list(os.getloadavg()),
        "mem_total": mem.get("MemTotal"),
        "mem_available": mem.get("MemAvailable"),
        "gpu": _gpu_json(gpu_report()),
    }
    with contextlib.suppress(OSError):
        usage = shutil.disk_usage(app_dir if os.path.isdir(app_dir) else "/")
        out.update(disk_total=usage.total, disk_free=usage.free)
    return out


# ------------------------------------------------------------------------ the daemon


@dataclasses.dataclass
class DbState:
    """The registry as the daemon last saw it (shared with the health thread)."""

    # unknown | up | down | none (no credentials of its own) | refused (not a node's role)
    state: str = "unknown"
    since: str = ""
    error: str | None = None
    last_heartbeat: str | None = None
    heartbeats: int = 0


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class _UTCFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # ISO 8601 in UTC: logs from nodes in different time zones sort and compare.
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class _HealthServer(ThreadingHTTPServer):
    daemon_threads = True  # a slow client never delays the daemon's exit

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for our FQDN: on a node without a reachable resolver
        # (the testbed's hosts, many LANs) that blocks for 10 s before /health answers.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _HealthServer6(_HealthServer):
    address_family = socket.AF_INET6  # a node whose cluster address is IPv6


def _saved_token(path: Path) -> str | None:
    """The token in the daemon's own token file, if it is a regular file of ours holding one
    (never followed through a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            return None
        token = fh.read(256).strip()
    return token if re.fullmatch(r"[A-Za-z0-9_\-.~+/=]{16,200}", token) else None


class Agent:
    """One node's daemon. `run()` blocks until `stop()` (or a signal) and returns 0.

    `settings.registry.dsn` must be the node's own DSN (`run_daemon` puts it there from
    `own_credentials`); any other role is refused on connect (ForeignRoleError, logged once).
    `missing_credentials`: the config names a registry but this node has no DSN of its own,
    so the log says what to run.
    """

    def __init__(
        self,
        settings: Settings,
        node: Node,
        *,
        interval: float = DEFAULT_INTERVAL,
        health_bind: str | None = None,
        health_token: str | None = None,
        registry_factory: Callable[[Settings], Registry] | None = None,
        app_dir: str | None = None,
        missing_credentials: bool = False,
    ):
        if interval <= 0:
            raise ConfigError(f"expected a positive number, got {interval!r}",
                              source=ENV_INTERVAL)
        self.settings = settings
        self.node = node
        self.interval = interval
        self.max_backoff = max(interval, min(MAX_BACKOFF, interval * 12))
        # The node's own cluster address unless told otherwise (never 0.0.0.0 by default).
        self.health_bind = health_bind or settings.daemon.health_bind or node.host
        self.app_dir = app_dir or os.getcwd()
        # A restarted daemon keeps the token its predecessor wrote: a health check that read
        # the file just before the restart still gets the details (pid) it compares.
        self.health_token = (health_token or settings.daemon.health_token
                             or _saved_token(Path(self.app_dir) / layout.HEALTH_TOKEN_FILE)
                             or secrets.token_urlsafe(24))
        self._registry_factory = registry_factory or (
            lambda s: open_registry(s, application_name=f"skeleton-daemon {node.id}")
        )
        self.pid = os.getpid()
        self.started = datetime.now(UTC)
        self.code_version = code_version(self.app_dir, exclude=settings.deploy.exclude)
        self.missing_credentials = missing_credentials and not settings.registry.dsn
        self.db = DbState(state="unknown" if settings.registry.dsn else "none",
                          since=_now_iso(),
                          error=_missing_hint(node.id) if self.missing_credentials else None)
        self._db_lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    # -- state shared with the health endpoint

    def health(self, *, details: bool = True) -> dict[str, Any]:
        """What /health answers: a liveness bit, or (with the token) the details."""
        if not details:
            return {"status": "ok"}
        with self._db_lock:
            db = dataclasses.asdict(self.db)
        return {
            "status": "ok",
            "node": self.node.id,
            "pid": self.pid,
            "started_at": self.started.isoformat(timespec="seconds"),
            "uptime_s": round((datetime.now(UTC) - self.started).total_seconds(), 3),
            "code_version": self.code_version,
            "skeleton_app": __version__,
            "db": db,
        }

    def _set_db(self, state: str, error: str | None = None) -> None:
        """Record the registry's state; log only when it changes (not on every retry)."""
        with self._db_lock:
            changed = state != self.db.state
            if changed:
                self.db.state = state
                self.db.since = _now_iso()
            self.db.error = error
        if not changed:
            return
        if state == "up":
            log.info("registry up: node %s registered, heartbeat every %gs", self.node.id,
                     self.interval)
        elif state == "down":
            log.warning("registry down: %s; retrying with backoff up to %gs", error,
                        self.max_backoff)

    # -- lifecycle

    def stop(self) -> None:
        self._stop.set()

    def start_health_server(self) -> ThreadingHTTPServer:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "skeleton-daemon"
            timeout = 5  # a client that never sends its request must not pin a thread

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/health":
                    self._send(404, {"error": "not found"})
                    return
                self._send(200, agent.health(details=self._authorized()))

            def _authorized(self) -> bool:
                given = self.headers.get("Authorization", "")
                scheme, _, token = given.partition(" ")
                # Constant-time: the comparison must not leak the token byte by byte.
                return scheme.lower() == "bearer" and hmac.compare_digest(
                    token.strip().encode(), agent.health_token.encode())

            def _send(self, code: int, body: Mapping[str, Any]) -> None:
                data = (json.dumps(body) + "\n").encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # health checks every few seconds would drown the log

        server = self._bind(Handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="skeleton-health", daemon=True)
        thread.start()
        self._server = server
        return server

    def _bind(self, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        """Listen on `health_bind`. An address this machine does not have (the node is
        reached through NAT or a port forward) falls back to loopback, with a warning:
        the controller queries /health over SSH on the node anyway."""
        server_class = _HealthServer6 if ":" in self.health_bind else _HealthServer
        try:
            return server_class((self.health_bind, self.node.api_port), handler)
        except OSError as exc:
            unassigned = exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror)
            if not unassigned or self.health_bind in ("127.0.0.1", "::1"):
                raise ConfigError(
                    f"cannot serve /health on {self.health_bind}:{self.node.api_port}:"
                    f" {exc.strerror} (another daemon running?)", key="daemon.api_port",
                ) from None
        log.warning("%s is not an address of this machine: /health on 127.0.0.1 only (set"
                    " daemon.health_bind)", self.health_bind)
        self.health_bind = "127.0.0.1"
        return self._bind(handler)

    def _write_token(self) -> None:
        """The token for the node's own user (health.sh reads it): 0600, replaced atomically."""
        path = Path(self.app_dir) / layout.HEALTH_TOKEN_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.health_token + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write the /health token to %s: %s", path, exc.strerror)

    def run(self) -> int:
        self._write_token()
        log.info("starting: node %s (%s), pid %d, code %s, health on %s:%d", self.node.id,
                 self.node.host, self.pid, self.code_version, self.health_bind,
                 self.node.api_port)
        self.start_health_server()
        worker = threading.Thread(target=self._heartbeat_loop, name="skeleton-heartbeat",
                                  daemon=True)
        worker.start()
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            log.info("stopping (pid %d)", self.pid)
            # Let an in-flight heartbeat finish first, so it cannot land after "stopped".
            worker.join(timeout=self.settings.registry.connect_timeout + 1)
            self._mark_stopped()
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
            log.info("stopped")
        return 0

    def _heartbeat_loop(self) -> None:
        if self.missing_credentials:
            log.warning("no registry credentials of this node's own: serving /health only."
                        " %s, then restart the daemon", _missing_hint(self.node.id))
            return
        if not self.settings.registry.dsn:
            log.info("no registry configured (registry.dsn / SKELETON_DATABASE_URL):"
                     " serving /health only")
            return
        registry: Registry | None = None
        verified = False
        registered = False
        backoff = self.interval
        caps: dict[str, Any] | None = None
        try:
            while not self._stop.is_set():
                wait = self.interval
                try:
                    if registry is None:
                        registry = self._registry_factory(self.settings)
                    if not verified:
                        self._check_role(registry)
                        verified = True
                    if not registered:
                        caps = caps or capabilities()
                        if registry.register_self(self.node, capabilities=caps):
                            log.warning("node %s registered itself: pending until an"
                                        " operator runs `skeleton nodes approve %s`",
                                        self.node.id, self.node.id)
                        registered = True
                    found = registry.heartbeat(
                        self.node.id, metrics=metrics(self.app_dir), daemon_state="running",
                        code_version=self.code_version, daemon_pid=self.pid,
                        started_at=self.started,
                    )
                    if not found:
                        # Removed meanwhile, or the database was recreated: register again
                        # at the next tick (a daemon that runs is a node that exists).
                        log.info("node %s not in the registry any more: registering again",
                                 self.node.id)
                        registered = False
                        self._stop.wait(self.interval)
                        continue
                    with self._db_lock:
                        self.db.last_heartbeat = _now_iso()
                        self.db.heartbeats += 1
                    self._set_db("up")
                    backoff = self.interval
                except ForeignRoleError as exc:
                    self._set_db("refused", str(exc))
                    log.error("%s", exc)
                    return
                except SkeletonError as exc:
                    # Re-register after an outage: the database may have been replaced.
                    registered = False
                    self._set_db("down", str(exc))
                    wait = backoff
                    backoff = min(backoff * 2, self.max_backoff)
                except Exception as exc:  # a bug must not silently end the heartbeats
                    log.exception("heartbeat failed unexpectedly: %s", exc)
                    wait = backoff
                    backoff = min(backoff * 2, self.max_backoff)
                self._stop.wait(wait)
        finally:
            if registry is not None:
                with contextlib.suppress(Exception):
                    registry.close()

    def _check_role(self, registry: Registry) -> None:
        """ForeignRoleError unless the DSN logs in as this node's own role. Row-level
        security confines a node role; any other role (the operator's) would let a
        compromised node rewrite every row, so the daemon writes nothing with it."""
        if not isinstance(registry, PostgresRegistry):
            return  # a registry injected by an embedding program: its own business
        role, owner = registry.node_of_login()
        if owner == self.node.id:
            return
        whose = f"node {owner}'s" if owner else "not a node's role (the operator's?)"
        raise ForeignRoleError(
            f"refusing the registry DSN: it logs in as {role}, {whose}; a daemon writes only"
            f" with node {self.node.id}'s own role. {_missing_hint(self.node.id)}, then"
            " restart the daemon")

    def _mark_stopped(self) -> None:
        with self._db_lock:
            refused = self.db.state == "refused"
        if not self.settings.registry.dsn or refused:
            return
        # A fresh connection with a short timeout: the heartbeat's may be the stuck one, and
        # the whole stop must fit in daemon control's grace period (10 s by default).
        quick = dataclasses.replace(
            self.settings,
            registry=dataclasses.replace(
                self.settings.registry,
                connect_timeout=min(self.settings.registry.connect_timeout, 3.0)),
        )
        try:
            registry = self._registry_factory(quick)
            try:
                self._check_role(registry)  # never verified if the database was always down
                registry.mark_stopped(self.node.id)
            finally:
                registry.close()
            log.info("marked %s stopped in the registry", self.node.id)
        except SkeletonError as exc:
            log.warning("could not mark %s stopped in the registry: %s", self.node.id, exc)


# ------------------------------------------------------------------------ entry points


def _setup_logging(path: Path) -> list[logging.Handler]:
    """Log to `path`; also to stderr when stderr is not already that file (a terminal)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    formatter = _UTCFormatter("%(asctime)s %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [logging.FileHandler(path, encoding="utf-8")]
    try:
        err, st = os.fstat(2), path.stat()
        same = (err.st_dev, err.st_ino) == (st.st_dev, st.st_ino)
    except OSError:
        same = False
    if not same:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handlers


def _missing_hint(node_id: str) -> str:
    return (f"On the controller, run `skeleton nodes credentials {node_id} --install` (the"
            f" node's own DSN, in registry.node_dsn_file; or set {ENV_NODE_DSN})")


def own_credentials(settings: Settings, *, env: Mapping[str, str] | None = None) -> Settings:
    """`settings` whose registry DSN is the node's own: `$SKELETON_NODE_DSN`, else the
    `registry.node_dsn_file` (`skeleton nodes credentials ID --install`), else none at all.
    Never `registry.dsn` as configured: that is the operator's, with rights on every row."""
    env = os.environ if env is None else env
    dsn = env.get(ENV_NODE_DSN, "").strip()
    if dsn:
        try:
            parse_dsn(dsn)
        except RegistryError as exc:
            raise ConfigError(str(exc), source=ENV_NODE_DSN) from None
    else:
        dsn = _read_node_dsn(os.path.expanduser(settings.registry.node_dsn_file))
    return dataclasses.replace(settings, registry=dataclasses.replace(settings.registry,
                                                                      dsn=dsn or None))


def _read_node_dsn(path: str) -> str:
    """The node DSN file's content, checked ('' when the file does not exist)."""
    try:
        dsn = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}",
                          key="registry.node_dsn_file") from None
    try:
        parse_dsn(dsn)
    except RegistryError as exc:
        raise ConfigError(f"{path}: {exc}", key="registry.node_dsn_file") from None
    return dsn


def _interval_from_env(env: Mapping[str, str]) -> float:
    raw = env.get(ENV_INTERVAL)
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"expected a positive number of seconds, got {raw!r}",
                          source=ENV_INTERVAL)
    return value


def run_daemon(
    settings: Settings,
    *,
    env: Mapping[str, str] | None = None,
    install_signals: bool = True,
) -> int:
    """Run the node daemon until SIGTERM/SIGINT; return the exit code (0 on a clean stop).

    ConfigError when this node cannot be identified or its health port cannot be bound.
    To embed the daemon in a process of your own, build an `Agent` and call `run()`/`stop()`.
    """
    env = os.environ if env is None else env
    own = own_credentials(settings, env=env)
    # The configured DSN only routes (which of our addresses faces the database host).
    node = resolve_node(own if own.registry.dsn else settings, env=env)
    interval = _interval_from_env(env)
    handlers = _setup_logging(Path(settings.logs_dir_for(node)) / layout.DAEMON_LOG)
    previous: dict[signal.Signals, Any] = {}
    try:
        agent = Agent(own, node, interval=interval,
                      health_bind=env.get(ENV_HEALTH_BIND) or None,
                      missing_credentials=bool(settings.registry.dsn))
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, lambda *_: agent.stop())
        return agent.run()
    except SkeletonError as exc:
        log.error("cannot run: %s", exc)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m skeleton_app.agent [--config PATH]`: the daemon without the CLI."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m skeleton_app.agent",
                                     description="Run the skeleton node daemon.")
    parser.add_argument("--config", "-c", default=None, metavar="PATH",
                        help="config file (default $SKELETON_CONFIG, else ./config.yaml)")
    args = parser.parse_args(argv)
    try:
        return run_daemon(load_config(args.config))
    except SkeletonError as exc:
        print(f"skeleton daemon: {exc}", file=sys.stderr)
        return exc.exit_code

