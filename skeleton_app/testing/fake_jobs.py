"""An in-memory `JobStore` (registry/job_records.py) for fast unit tests of what sits on the
queue: the dispatcher, the `Cluster.jobs` facade, the front ends.

It keeps the protocol's semantics, so a test that passes here tests the real rules: claims
are serialised (one lock), a claim draws a new fencing token from a sequence, every fenced
write (`renew`, `started`, `finish`, `lose`) matches only the current token of a running
job, a lease expires by the store's clock (`advance(seconds)` moves it), an expired lease
is taken over with the old attempt `superseded`, and every insert or change of state or
cancel_requested is delivered to each open listener like a NOTIFY.

    store = FakeJobStore()
    job = store.submit(JobSpec(engine), [("a.wav", data)], submitted_by="t", max_attempts=3)
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from skeleton_app.errors import RegistryError
from skeleton_app.registry.job_records import (
    FINAL_STATES,
    Attempt,
    AttemptOutcome,
    Claim,
    Cleanup,
    Job,
    JobEvent,
    JobFile,
    JobSpec,
    JobState,
    Load,
    Router,
)

# Outcomes whose node may still hold the attempt's process or directory.
CLEANUP_OUTCOMES = ("lost", "superseded", "cancelled", "failed", "done")


class FakeListener:
    """A LISTEN: events queued by the store, read with `wait`."""

    def __init__(self, store: FakeJobStore):
        self._store = store
        self._events: list[JobEvent] = []
        self._cond = threading.Condition()
        self.closed = False

    def push(self, event: JobEvent) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def wait(self, timeout: float) -> list[JobEvent]:
        with self._cond:
            if not self._events and not self.closed:
                self._cond.wait(max(timeout, 0.0))
            events, self._events = self._events, []
            return events

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._store._listeners.discard(self)


class FakeJobStore:
    """The queue in memory. `clock` gives the database's now (aware UTC datetimes);
    `fail` set to a message makes every call raise RegistryError (a database down)."""

    def __init__(self, clock: Callable[[], datetime] | None = None):
        self._clock = clock
        self._offset = timedelta(0)
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self.jobs: dict[int, Job] = {}
        self.tokens: dict[int, int] = {}  # job id -> current lease token
        self.not_before: dict[int, datetime] = {}
        self.attempt_rows: dict[int, list[Attempt]] = {}
        self.file_rows: dict[tuple[int, str, str], bytes] = {}
        self.cooldowns: dict[str, tuple[datetime, str]] = {}
        self.dispatchers: dict[str, datetime] = {}
        self.gone: set[str] = set()
        self._listeners: set[FakeListener] = set()
        self.fail: str | None = None
        self.calls: list[str] = []  # method names, in order (what a test may assert on)

    # -------------------------------------------------------------- test controls

    def now(self) -> datetime:
        base = self._clock() if self._clock is not None else datetime.now(UTC)
        return base + self._offset

    def advance(self, seconds: float) -> None:
        """Move the store's clock (leases and cool-downs expire by it)."""
        with self._lock:
            self._offset += timedelta(seconds=seconds)

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if self.fail is not None:
            raise RegistryError(self.fail)

    def _notify(self, job: Job) -> None:
        event = JobEvent(id=job.id, state=job.state, engine=job.engine, attempt=job.attempts,
                         cancel=job.cancel_requested)
        for listener in list(self._listeners):
            listener.push(event)

    def _set(self, job: Job, **changes: Any) -> Job:
        new = dataclasses.replace(job, **changes)
        self.jobs[job.id] = new
        if new.state != job.state or new.cancel_requested != job.cancel_requested:
            self._notify(new)
        return new

    def _end_attempt(self, job_id: int, outcome: AttemptOutcome,
                     **changes: Any) -> Attempt | None:
        rows = self.attempt_rows.get(job_id, [])
        for i, row in enumerate(rows):
            if row.outcome == "running":
                rows[i] = dataclasses.replace(row, outcome=outcome, ended_at=self.now(),
                                              **changes)
                return rows[i]
        return None

    def _fenced(self, job_id: int, token: int) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None or job.state != "running" or self.tokens.get(job_id) != token:
            return None
        return job

    # -------------------------------------------------------------- submitters

    def submit(self, spec: JobSpec, inputs: Sequence[tuple[str, bytes]], *,
               submitted_by: str, max_attempts: int) -> Job:
        with self._lock:
            self._enter("submit")
            job = Job(id=next(self._ids), engine=spec.engine.name, role=spec.engine.role,
                      spec=spec, state="queued", submitted_by=submitted_by,
                      submitted_at=self.now(), max_attempts=max_attempts, attempts=0)
            self.jobs[job.id] = job
            self.attempt_rows[job.id] = []
            for name, data in inputs:
                self.file_rows[(job.id, "input", name)] = bytes(data)
            self._notify(job)
            return job

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            self._enter("get")
            return self.jobs.get(job_id)

    def list(self, *, states: Sequence[str] = (), limit: int = 100) -> tuple[Job, ...]:
        with self._lock:
            self._enter("list")
            jobs = [j for j in sorted(self.jobs.values(), key=lambda j: -j.id)
                    if not states or j.state in states]
            return tuple(jobs[:limit])

    def attempts(self, job_id: int) -> tuple[Attempt, ...]:
        with self._lock:
            self._enter("attempts")
            return tuple(self.attempt_rows.get(job_id, ()))

    def files(self, job_id: int) -> tuple[JobFile, ...]:
        with self._lock:
            self._enter("files")
            return tuple(
                JobFile(kind="input" if kind == "input" else "output", name=name,
                        sha256=hashlib.sha256(data).hexdigest(), size=len(data))
                for (jid, kind, name), data in sorted(self.file_rows.items()) if jid == job_id)

    def file_data(self, job_id: int, kind: str, name: str) -> bytes | None:
        with self._lock:
            self._enter("file_data")
            return self.file_rows.get((job_id, kind, name))

    def cancel(self, job_id: int) -> Job | None:
        with self._lock:
            self._enter("cancel")
            job = self.jobs.get(job_id)
            if job is None or job.final:
                return job
            if job.state == "queued":
                return self._set(job, state="cancelled", finished_at=self.now(),
                                 error="cancelled before it ran")
            return self._set(job, cancel_requested=True)

    def retry(self, job_id: int) -> Job | None:
        with self._lock:
            self._enter("retry")
            job = self.jobs.get(job_id)
            if job is None or job.state not in ("failed", "cancelled"):
                return job
            self.tokens.pop(job_id, None)
            return self._set(job, state="queued", attempts=0, cancel_requested=False,
                             lease_owner=None, lease_until=None, finished_at=None,
                             exit_code=None, error=None, result={})

    def listen(self) -> FakeListener:
        with self._lock:
            self._enter("listen")
            listener = FakeListener(self)
            self._listeners.add(listener)
            return listener

    # -------------------------------------------------------------- dispatchers

    def load(self) -> Load:
        with self._lock:
            now = self.now()
            running: dict[str, int] = {}
            idle: dict[str, datetime] = {}
            for rows in self.attempt_rows.values():
                for row in rows:
                    if row.outcome == "running":
                        running[row.node_id] = running.get(row.node_id, 0) + 1
                    elif row.ended_at is not None and (row.node_id not in idle
                                                       or idle[row.node_id] < row.ended_at):
                        idle[row.node_id] = row.ended_at
            cooldown = {k: v for k, v in self.cooldowns.items() if v[0] > now}
            return Load(now=now, running=running, cooldown=cooldown, idle_since=idle)

    def claim_many(self, dispatcher: str, *, lease: float, route: Router, most: int,
                   limit: int = 16, only: Sequence[int] | None = None) -> tuple[Claim, ...]:
        claims: list[Claim] = []
        with self._lock:  # one transaction: nothing else in between
            while len(claims) < most:
                claim = self.claim(dispatcher, lease=lease, route=route, limit=limit,
                                   only=only)
                if claim is None:
                    break
                claims.append(claim)
        return tuple(claims)

    def claim(self, dispatcher: str, *, lease: float, route: Router,
              limit: int = 16, only: Sequence[int] | None = None) -> Claim | None:
        with self._lock:
            self._enter("claim")
            now = self.now()
            tried = 0
            for job in sorted(self.jobs.values(), key=lambda j: j.id):
                if tried >= limit * 8:  # registry/job_leases.py reads up to 8 pages
                    break
                queued = job.state == "queued" and self.not_before.get(job.id, now) <= now
                expired = (job.state == "running" and job.lease_until is not None
                           and job.lease_until < now)
                if not (queued or expired):
                    continue
                tried += 1
                if expired:
                    self._end_attempt(job.id, "superseded")
                    if job.cancel_requested:
                        self._set(job, state="cancelled", finished_at=now, error="cancelled",
                                  lease_owner=None, lease_until=None)
                        continue
                    if job.attempts >= job.max_attempts:
                        self._set(job, state="failed", finished_at=now, lease_owner=None,
                                  lease_until=None, error=f"its dispatcher went away"
                                                          f" {job.attempts} times")
                        continue
                    job = self._set(job, state="queued", lease_owner=None, lease_until=None)
                if only is not None and job.id not in only:
                    continue
                placed = route(job, self.load())
                if placed is None:
                    continue
                token = next(self._tokens)
                self.tokens[job.id] = token
                job = self._set(job, state="running", lease_owner=dispatcher,
                                lease_until=now + timedelta(seconds=lease),
                                attempts=job.attempts + 1, node=placed.node_id)
                # Numbered after every earlier attempt: a retried job keeps its history.
                attempt = Attempt(job_id=job.id, n=len(self.attempt_rows[job.id]) + 1,
                                  node_id=placed.node_id,
                                  dispatcher=dispatcher, lease_token=token,
                                  reason=dict(placed.reason), started_at=now)
                self.attempt_rows[job.id].append(attempt)
                return Claim(job=job, attempt=attempt, token=token)
            return None

    def renew(self, job_id: int, token: int, *, lease: float) -> bool:
        with self._lock:
            self._enter("renew")
            job = self._fenced(job_id, token)
            if job is None:
                return False
            self._set(job, lease_until=self.now() + timedelta(seconds=lease))
            return True

    def started(self, job_id: int, token: int, *, remote_pgid: int | None) -> bool:
        with self._lock:
            self._enter("started")
            if self._fenced(job_id, token) is None:
                return False
            rows = self.attempt_rows[job_id]
            rows[-1] = dataclasses.replace(rows[-1], remote_pgid=remote_pgid)
            return True

    def finish(self, job_id: int, token: int, *,
               state: Literal["done", "failed", "cancelled"], exit_code: int | None,
               error: str | None, stderr_tail: str, result: Mapping[str, Any],
               outputs: Sequence[tuple[str, bytes]] = (),
               remote_pgid: int | None = None, cleaned: bool = False) -> bool:
        with self._lock:
            self._enter("finish")
            job = self._fenced(job_id, token)
            if job is None:
                return False
            running = [a for a in self.attempt_rows[job_id] if a.outcome == "running"]
            pgid = running[0].remote_pgid if running and running[0].remote_pgid else remote_pgid
            self._end_attempt(job_id, state, exit_code=exit_code, stderr_tail=stderr_tail,
                              remote_pgid=pgid, cleaned_at=self.now() if cleaned else None)
            for name, data in outputs:
                self.file_rows[(job_id, "output", name)] = bytes(data)
            self._set(job, state=state, exit_code=exit_code, error=error, result=dict(result),
                      finished_at=self.now(), lease_owner=None, lease_until=None)
            return True

    def lose(self, job_id: int, token: int, *, why: str, cooldown: float) -> JobState | None:
        with self._lock:
            self._enter("lose")
            job = self._fenced(job_id, token)
            if job is None:
                return None
            ended = self._end_attempt(job_id, "lost", stderr_tail=why)
            if ended is not None and cooldown > 0:
                self.cooldowns[ended.node_id] = (self.now() + timedelta(seconds=cooldown),
                                                 f"lost job {job_id}")
            self.tokens.pop(job_id, None)
            if job.attempts < job.max_attempts:
                new = self._set(job, state="queued", lease_owner=None, lease_until=None)
            else:
                new = self._set(job, state="failed", lease_owner=None, lease_until=None,
                                finished_at=self.now(),
                                error=f"lost {job.attempts} times; last: {why}")
            return new.state

    def cleanups(self, *, limit: int = 50) -> tuple[Cleanup, ...]:
        with self._lock:
            self._enter("cleanups")
            out = [Cleanup(job_id=a.job_id, n=a.n, node_id=a.node_id, remote_pgid=a.remote_pgid)
                   for rows in self.attempt_rows.values() for a in rows
                   if a.outcome in CLEANUP_OUTCOMES and a.cleaned_at is None]
            return tuple(out[:limit])

    def cleaned(self, job_id: int, n: int) -> None:
        with self._lock:
            self._enter("cleaned")
            rows = self.attempt_rows.get(job_id, [])
            for i, row in enumerate(rows):
                if row.n == n:
                    rows[i] = dataclasses.replace(row, cleaned_at=self.now())

    def dispatcher_seen(self, dispatcher: str, *, host: str, pid: int) -> None:
        with self._lock:
            self._enter("dispatcher_seen")
            self.dispatchers[dispatcher] = self.now()
            self.gone.discard(dispatcher)

    def dispatcher_gone(self, dispatcher: str) -> None:
        with self._lock:
            self._enter("dispatcher_gone")
            self.dispatchers.pop(dispatcher, None)
            self.gone.add(dispatcher)

    def live_dispatchers(self, *, within: float) -> tuple[str, ...]:
        with self._lock:
            self._enter("live_dispatchers")
            limit = self.now() - timedelta(seconds=within)
            return tuple(sorted(d for d, seen in self.dispatchers.items() if seen >= limit))

    def close(self) -> None:
        for listener in list(self._listeners):
            listener.close()


def final(job: Job | None) -> bool:
    """The job exists and has ended (a helper for polling tests)."""
    return job is not None and job.state in FINAL_STATES
