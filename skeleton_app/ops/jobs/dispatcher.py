"""The dispatcher: claims jobs, routes each to the best node, runs it there, renews its lease,
ends it exactly once (fenced), fails over when a node is lost, kills orphans.

Several dispatchers may run at once, on several machines: the database serialises claims
(registry/jobs.py), and a job's end is written only with its current lease token.

One loop (`run`) and a thread per running attempt (ops/jobs/attempt.py). The loop wakes on
NOTIFY (`JobListener`: a job queued, ended, or asked to cancel) and at least every
`jobs.poll` s (a NOTIFY is lost while disconnected), and it:
- claims while a job can be routed (routing.py over the registry's nodes, refreshed every
  second, and the preflight cache, preflight.py);
- renews each running attempt's lease every lease/3 (a renewal that matches no row: another
  dispatcher owns the job, so ours is killed and writes nothing);
- hands a cancel to the attempt that runs the job (kill on the node, end `cancelled`);
- loses an attempt whose node's daemon went stale (an unreachable or frozen node is noticed
  by the attempt itself: its node.wait raises NodeError after ~2 ssh.keepalive);
- writes its own heartbeat (`job_dispatchers`), and sweeps orphans every ~15 s: attempts
  that ended lost/superseded/cancelled on a node that answers again are killed there.

Driving it from a test:

    dispatcher = Dispatcher(cluster, store, node_api=fake_node, registry=fake_registry)
    stop = dispatcher.start()      # a background thread
    ...                            # submit, wait for the job's end
    outcome = stop()               # DispatchOutcome
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from skeleton_app.engines import Engine
from skeleton_app.errors import RegistryError
from skeleton_app.nodes import Node
from skeleton_app.ops.jobs import routing
from skeleton_app.ops.jobs.attempt import AttemptContext, AttemptRun, NodeApi
from skeleton_app.ops.jobs.fleet import Fleet, NodeSource, sweep_orphans
from skeleton_app.ops.jobs.leases import poll_cancels, watch_leases
from skeleton_app.ops.jobs.preflight import PreflightCache
from skeleton_app.registry.job_records import (
    Claim,
    Job,
    JobEvent,
    JobListener,
    JobStore,
    Load,
    Route,
)

if TYPE_CHECKING:
    from skeleton_app.cluster import Cluster

WAKE_EVERY = 0.25  # the loop's longest sleep: local wake-ups (a preflight done) act this fast
NODES_EVERY = 1.0
BEAT_EVERY = 2.0
SWEEP_EVERY = 15.0
CLAIM_BATCH = 8  # claims per transaction at most (a lease starts at its claim: keep it short)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DispatchOutcome:
    """What one dispatcher did until it stopped."""

    dispatcher: str
    claimed: int
    done: int
    failed: int
    lost: int
    cancelled: int
    seconds: float


def in_background(run: Callable[[threading.Event], T], *, name: str) -> Callable[[], T]:
    """`run(stop)` in a daemon thread; the function returned sets `stop`, joins the thread
    and gives what `run` returned (or raises what it raised)."""
    stop = threading.Event()
    box: dict[str, T] = {}
    errors: list[BaseException] = []

    def body() -> None:
        try:
            box["outcome"] = run(stop)
        except BaseException as exc:  # handed to the caller of halt()
            errors.append(exc)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()

    def halt() -> T:
        stop.set()
        thread.join()
        if errors:
            raise errors[0]
        return box["outcome"]

    return halt


def _default_node_api() -> NodeApi:
    from skeleton_app.ops.jobs import node

    # The module is the implementation (mypy checks a module against a Protocol).
    return node


class Dispatcher:
    """Run jobs until stopped. `run()` blocks; `start()` runs it in a thread (for --wait)."""

    # ~260 lines: one loop whose steps share its running attempts, fleet and preflight cache.

    def __init__(self, cluster: Cluster, store: JobStore, *, dispatcher_id: str | None = None,
                 on_event: Callable[[str], None] | None = None,
                 node_api: NodeApi | None = None, registry: NodeSource | None = None,
                 max_running: int | None = None, sweep_every: float = SWEEP_EVERY,
                 clock: Callable[[], float] = time.monotonic,
                 only: Sequence[int] | None = None):
        self._cluster = cluster
        self._settings = cluster.settings
        self._store = store
        self._id = dispatcher_id or (f"{socket.gethostname()}:{os.getpid()}:"
                                     f"{secrets.token_hex(3)}")
        self._on_event = on_event
        self._node_api = node_api or _default_node_api()
        self._fleet = Fleet(self._settings, registry, self._log)
        self._max_running = max_running
        # `jobs submit --wait` with no dispatcher: it runs its own jobs only (never another
        # user's, which it would leave to their leases when it stops), and it does not count
        # as a live dispatcher (another --wait must then start its own).
        self._only = None if only is None else tuple(int(i) for i in only)
        self._sweep_every = sweep_every
        self._clock = clock
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._running: dict[int, AttemptRun] = {}  # job id -> its attempt here
        self._threads: list[threading.Thread] = []
        self._sweeping = threading.Lock()
        self._counts = {"claimed": 0, "done": 0, "failed": 0, "lost": 0, "cancelled": 0}
        self._unroutable: dict[int, str] = {}  # job id -> last reason logged (no repeats)
        self._preflight = PreflightCache(self._check, on_done=self._wake.set, on_event=self._log)

    @property
    def id(self) -> str:
        return self._id

    def _log(self, line: str) -> None:
        if self._on_event is not None:
            self._on_event(line)

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event | None = None) -> DispatchOutcome:
        """Dispatch until `stop` is set (or Ctrl-C); running jobs are left to their leases."""
        stop = stop or threading.Event()
        self._halt.clear()
        started = self._clock()
        listener: JobListener | None = None
        due = {"nodes": 0.0, "beat": 0.0, "sweep": started + 1.0, "poll": 0.0,
               "listen": 0.0, "cancels": 0.0}
        self._log(f"dispatcher {self._id} started")
        try:
            while not stop.is_set():
                now = self._clock()
                if now >= due["nodes"]:
                    self._refresh_nodes()
                    due["nodes"] = now + NODES_EVERY
                if now >= due["beat"]:
                    self._beat()
                    due["beat"] = now + min(BEAT_EVERY, self._settings.jobs.lease / 3)
                if now >= due["sweep"]:
                    self._start_sweep()
                    due["sweep"] = now + self._sweep_every
                self._watch_running()
                if now >= due["cancels"]:
                    self._poll_cancels()
                    due["cancels"] = now + self._settings.jobs.lease / 3
                if self._wake.is_set() or now >= due["poll"]:
                    self._wake.clear()
                    self.claim_all()
                    due["poll"] = now + self._settings.jobs.poll
                if listener is None and now >= due["listen"]:
                    listener = self._listen()
                    due["listen"] = now + self._settings.jobs.poll
                if listener is None:
                    stop.wait(WAKE_EVERY)
                    continue
                try:
                    events = listener.wait(WAKE_EVERY)
                except RegistryError as exc:
                    self._log(f"listen: {exc}; polling until it is back")
                    with contextlib.suppress(Exception):
                        listener.close()
                    listener = None
                    continue
                for event in events:
                    self.on_notify(event)
        except KeyboardInterrupt:
            self._log("interrupted")
        finally:
            self._halt.set()
            if listener is not None:
                with contextlib.suppress(Exception):
                    listener.close()
            for thread in list(self._threads):
                thread.join(timeout=5.0)
            if self._only is None:
                with contextlib.suppress(RegistryError):
                    self._store.dispatcher_gone(self._id)
            self._fleet.close()
            self._log(f"dispatcher {self._id} stopped")
        with self._lock:
            counts = dict(self._counts)
        return DispatchOutcome(dispatcher=self._id, seconds=round(self._clock() - started, 3),
                               **counts)

    def start(self) -> Callable[[], DispatchOutcome]:
        """Run in a background thread; the returned function stops it and returns the outcome."""
        return in_background(self.run, name=f"dispatcher {self._id}")

    def on_notify(self, event: JobEvent) -> None:
        """A NOTIFY: a cancel reaches the attempt running the job here; anything else (a job
        queued, or one ended, freeing a slot) is a reason to claim again."""
        if event.cancel and event.state == "running":
            with self._lock:
                run = self._running.get(event.id)
            if run is not None:
                # Anyone who may log in can NOTIFY on the channel: the event is only a reason
                # to read the rows, which say whether a cancel was really asked for.
                poll_cancels([run], self._store)
        self._wake.set()

    # ------------------------------------------------------------------ claims

    def claim_all(self) -> int:
        """Claim and start jobs while one can be routed; how many were started. Claims come
        CLAIM_BATCH to a transaction (each is several statements under the claim lock)."""
        started = 0
        burst_until = self._clock() + self._settings.jobs.lease / 6
        while not self._halt.is_set():
            if started and self._clock() >= burst_until:
                # A long burst of claims must not starve the renewals of the jobs already
                # running here (their leases would lapse and this dispatcher would take its
                # own jobs over): the loop renews, then claims again.
                self._wake.set()
                break
            self._watch_running()
            most = CLAIM_BATCH
            with self._lock:
                if self._max_running is not None:
                    most = min(most, self._max_running - len(self._running))
            if most <= 0:
                break
            try:
                claims = self._store.claim_many(self._id, lease=self._settings.jobs.lease,
                                                route=self._route, most=most, only=self._only)
            except RegistryError as exc:
                self._log(f"claim: {exc}")
                break
            for claim in claims:
                self._launch(claim)
            started += len(claims)
            if len(claims) < most:  # nothing more can be routed now
                break
        return started

    def _route(self, job: Job, load: Load) -> Route | None:
        engine = job.spec.engine
        entries = tuple(self._fleet.entries.values())
        with_role = [e.node.id for e in entries if engine.role in e.node.roles]
        retry_of = ({"attempt": job.attempts, "node": job.node}
                    if job.attempts and job.node else None)
        decision = routing.decide(
            engine, entries, load, stale_after=self._settings.registry.stale_after,
            default_slots=self._settings.jobs.slots,
            preflight=self._preflight.results(engine, with_role), retry_of=retry_of)
        for node_id in decision.needs_preflight:
            entry = self._fleet.entries.get(node_id)
            if entry is not None:
                self._preflight.schedule(entry.node, engine)
        if decision.route is None and decision.needs_preflight:
            pass  # a check is on its way: the job is routed again when it ends (no news yet)
        elif decision.route is None:
            line = routing.explain(decision.reason)
            if self._unroutable.get(job.id) != line:
                if len(self._unroutable) > 1000:  # jobs taken by others meanwhile
                    self._unroutable.clear()
                self._unroutable[job.id] = line
                self._log(f"job {job.id} waits: {line}")
        else:
            self._unroutable.pop(job.id, None)
        return decision.route

    def _launch(self, claim: Claim) -> None:
        entry = self._fleet.entries.get(claim.attempt.node_id)
        with self._lock:
            self._counts["claimed"] += 1
        ctx = AttemptContext(store=self._store, runner=self._cluster.connector,
                             node_api=self._node_api, settings=self._settings,
                             halt=self._halt, log=self._log, forget_node=self._preflight.forget,
                             clock=self._clock)
        if entry is None:  # removed from the registry between routing and now
            with contextlib.suppress(RegistryError):
                self._store.lose(claim.job.id, claim.token, why="node left the registry",
                                 cooldown=0.0)
            return
        run = AttemptRun(ctx, claim, entry.node)
        self._log(f"{run.label()}: claimed; {routing.explain(claim.attempt.reason)}")
        thread = threading.Thread(target=self._attempt_body, args=(run,), daemon=True,
                                  name=f"job {claim.job.id}.{claim.attempt.n}")
        with self._lock:
            self._running[claim.job.id] = run
            self._threads.append(thread)
        thread.start()

    def _attempt_body(self, run: AttemptRun) -> None:
        try:
            run.run()
        finally:
            with self._lock:
                if self._running.get(run.job_id) is run:
                    del self._running[run.job_id]
                if run.ending in self._counts:
                    self._counts[str(run.ending)] += 1
                self._threads = [t for t in self._threads
                                 if t.is_alive() and t is not threading.current_thread()]
            self._wake.set()  # a slot is free here

    # ------------------------------------------------------------------ leases, nodes

    def _watch_running(self) -> None:
        with self._lock:
            runs = list(self._running.values())
        watch_leases(runs, self._store, self._settings, self._fleet.entries,
                     clock=self._clock, log=self._log)

    def _poll_cancels(self) -> None:
        with self._lock:
            runs = list(self._running.values())
        poll_cancels(runs, self._store)

    def _refresh_nodes(self) -> None:
        if self._fleet.refresh():
            self._prewarm()

    def _prewarm(self) -> None:
        """Check the configured engines on their nodes before the first job needs it."""
        for entry in self._fleet.usable():
            for engine in self._settings.engines:
                if engine.role in entry.node.roles:
                    self._preflight.schedule(entry.node, engine)

    def _check(self, node: Node, engine: Engine) -> str | None:
        return self._node_api.preflight(self._cluster.connector, node, engine)

    def _listen(self) -> JobListener | None:
        try:
            return self._store.listen()
        except RegistryError as exc:
            self._log(f"listen: {exc}; polling every {self._settings.jobs.poll:g} s")
            return None

    def _beat(self) -> None:
        if self._only is not None:
            return
        try:
            self._store.dispatcher_seen(self._id, host=socket.gethostname(), pid=os.getpid())
        except RegistryError as exc:
            self._log(f"heartbeat: {exc}")

    # ------------------------------------------------------------------ orphans

    def _start_sweep(self) -> None:
        if self._sweeping.locked():
            return
        threading.Thread(target=self.sweep, daemon=True, name="jobs sweep").start()

    def sweep(self) -> int:
        """Kill and remove what ended attempts left on nodes that answer; how many."""
        if not self._sweeping.acquire(blocking=False):
            return 0
        try:
            with self._lock:
                mine = {(r.job_id, r.n) for r in self._running.values()}
            return sweep_orphans(self._store, self._node_api, self._cluster.connector,
                                 self._fleet.entries,
                                 stale_after=self._settings.registry.stale_after, skip=mine,
                                 halt=self._halt, log=self._log)
        except RegistryError as exc:
            self._log(f"sweep: {exc}")
            return 0
        finally:
            self._sweeping.release()

    def running(self) -> Sequence[int]:
        """Ids of the jobs this dispatcher runs now."""
        with self._lock:
            return tuple(self._running)
