"""The node daemon's main object, `Agent`: registers its node, sends heartbeats, serves
/health, marks itself stopped.

The registry may be down, at start or at any time later: the daemon keeps running and keeps
answering /health, logs one line per change of the registry's state (never one per failed
attempt), retries with exponential backoff and resumes heartbeats when it returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from typing import Any

from skeleton_app import __version__
from skeleton_app.agent import health
from skeleton_app.agent.identity import missing_hint
from skeleton_app.agent.metrics import capabilities, metrics
from skeleton_app.agent.prometheus import DaemonFacts, NodeCollector, exposition
from skeleton_app.agent.version import code_version
from skeleton_app.config import Settings
from skeleton_app.errors import ConfigError, ForeignRoleError, SkeletonError
from skeleton_app.nodes import Node
from skeleton_app.registry import PostgresRegistry, Registry, open_registry
from skeleton_app.registry.metrics_retention import PRUNE_EVERY

log = logging.getLogger("skeleton_app.agent")

DEFAULT_INTERVAL = 5.0  # seconds between heartbeats
MAX_BACKOFF = 30.0  # seconds between attempts while the registry is down
ENV_INTERVAL = "SKELETON_HEARTBEAT_INTERVAL"


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
        self.health_token = health.load_token(self.app_dir,
                                              health_token or settings.daemon.health_token)
        self._registry_factory = registry_factory or (
            lambda s: open_registry(s, application_name=f"skeleton-daemon {node.id}")
        )
        self.pid = os.getpid()
        self.started = datetime.now(UTC)
        self.code_version = code_version(self.app_dir, exclude=settings.deploy.exclude)
        self.missing_credentials = missing_credentials and not settings.registry.dsn
        self.db = DbState(state="unknown" if settings.registry.dsn else "none",
                          since=_now_iso(),
                          error=missing_hint(node.id) if self.missing_credentials else None)
        self._db_lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._next_prune = 0.0  # time.monotonic() of the next prune of the history
        self._prune_failing = False

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

    def _db_state(self) -> str:
        with self._db_lock:
            return self.db.state

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
        """Serve /health in a thread (see skeleton_app.agent.health); an address this
        machine does not have falls back to loopback, and `health_bind` says so."""
        collector = NodeCollector(
            DaemonFacts(node_id=self.node.id, app_dir=self.app_dir,
                        started=self.started.timestamp(), code_version=self.code_version),
            registry_state=self._db_state)
        server, self.health_bind = health.serve(
            self.health_bind, self.node.api_port, token=self.health_token,
            report=lambda authorized: self.health(details=authorized),
            metrics=exposition(collector))
        self._server = server
        return server

    def _write_token(self) -> None:
        health.write_token(self.app_dir, self.health_token)

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
                        " %s, then restart the daemon", missing_hint(self.node.id))
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
                    self._prune(registry)
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

    def _prune(self, registry: Registry) -> None:
        """Prune and down-sample this node's history every PRUNE_EVERY seconds, or with every
        heartbeat while a backlog lasts (registry/metrics_retention.py: one short transaction
        each). A failure is logged once per change and never stops the heartbeats."""
        now = time.monotonic()
        if not isinstance(registry, PostgresRegistry) or now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        try:
            outcome = registry.prune_history(self.node.id,
                                             retention=self.settings.registry.metrics_retention)
        except SkeletonError as exc:
            if not self._prune_failing:
                log.warning("cannot prune the metrics history (retrying every %gs): %s",
                            PRUNE_EVERY, exc)
            self._prune_failing = True
            return
        if self._prune_failing:
            log.info("metrics history pruned again")
        self._prune_failing = False
        if outcome.more:  # a backlog (bounded chunks): the next one with the next heartbeat
            self._next_prune = now

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
            f" with node {self.node.id}'s own role. {missing_hint(self.node.id)}, then"
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
