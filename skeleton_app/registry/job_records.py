"""The jobs queue's values (migration 0003): a job as submitted (JobSpec) and as stored (Job),
its attempts, its files, a dispatcher's claim on it and the events `LISTEN` delivers; and
`JobStore`, the protocol the queue's PostgreSQL code (registry/jobs.py) implements and the
dispatcher (ops/jobs) is written against. No I/O and no psycopg here.

States. A job is `queued` until a dispatcher claims it (`running`), then ends `done`,
`failed` or `cancelled` exactly once: the end is written only by the holder of the job's
current lease token (fencing: a takeover draws a new token from a sequence, and a late
finisher's write matches no row). An attempt is one run on one node; it ends `done`,
`failed`, `cancelled`, `lost` (its node went away: the job is queued again) or
`superseded` (its dispatcher's lease expired and another dispatcher took the job). An
attempt that did not end `done`/`failed` on a reachable node may have left a process and a
directory there: `cleaned_at` stays NULL until a dispatcher has killed and removed them.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from skeleton_app.engines import Engine

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
JOB_STATES: tuple[str, ...] = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES: tuple[str, ...] = ("done", "failed", "cancelled")
AttemptOutcome = Literal["running", "done", "failed", "cancelled", "lost", "superseded"]
ATTEMPT_OUTCOMES: tuple[str, ...] = ("running", "done", "failed", "cancelled", "lost",
                                     "superseded")
NOTIFY_CHANNEL = "skeleton_jobs"
MAX_TEXT = 10_000  # a tts text


def safe_file_name(name: str, *, default: str = "input") -> str:
    """A submitter's file name as it may appear on a node and in job_files: the base name,
    only [A-Za-z0-9._-], no leading dot, at most 100 characters (the extension kept)."""
    base = posixpath.basename(name.replace("\\", "/"))
    kept = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in base)
    kept = kept.lstrip(".-") or default
    if len(kept) > 100:
        stem, dot, ext = kept.rpartition(".")
        kept = (stem[: 100 - len(ext) - 1] + "." + ext) if dot and len(ext) <= 16 else kept[:100]
    return kept


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What to run: the engine (whole, as it was when submitted), the input file's name or the
    text, and a label for lists (the input's name, or the start of the text)."""

    engine: Engine
    input_name: str | None = None  # safe_file_name() of the submitted file
    text: str | None = None
    label: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"engine": self.engine.as_dict(), "input_name": self.input_name,
                "text": self.text, "label": self.label}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> JobSpec:
        """A stored spec, validated again (a row is untrusted input). ValueError if bad."""
        engine_raw = dict(raw["engine"])
        name = engine_raw.pop("name")
        engine = Engine.from_dict(name, engine_raw, source="jobs row")
        input_name = raw.get("input_name")
        if input_name is not None and safe_file_name(input_name) != input_name:
            raise ValueError(f"bad input name {input_name!r}")
        text = raw.get("text")
        if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT):
            raise ValueError("bad text")
        return cls(engine=engine, input_name=input_name, text=text,
                   label=str(raw.get("label", ""))[:200])


@dataclass(frozen=True, slots=True)
class JobFile:
    """An input (copied to the node) or output (fetched back) file; data read separately."""

    kind: Literal["input", "output"]
    name: str  # a safe_file_name()
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    engine: str
    role: str
    spec: JobSpec
    state: JobState
    submitted_by: str
    submitted_at: datetime
    max_attempts: int
    attempts: int  # attempts started so far
    cancel_requested: bool = False
    lease_owner: str | None = None
    lease_until: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    error: str | None = None
    node: str | None = None  # the node of the latest attempt
    # Facts of the end: {"output": name, "size": n, "sha256": h, "seconds": s, ...}
    result: Mapping[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (`jobs list/show --json`); `attempts_made` is the count."""
        return {
            "id": self.id, "engine": self.engine, "role": self.role, "state": self.state,
            "label": self.spec.label, "input": self.spec.input_name, "text": self.spec.text,
            "submitted_by": self.submitted_by, "submitted_at": _iso(self.submitted_at),
            "attempts_made": self.attempts, "max_attempts": self.max_attempts,
            "cancel_requested": self.cancel_requested, "node": self.node,
            "lease_owner": self.lease_owner, "lease_until": _iso(self.lease_until),
            "finished_at": _iso(self.finished_at), "exit_code": self.exit_code,
            "error": self.error, "result": dict(self.result),
        }


@dataclass(frozen=True, slots=True)
class Attempt:
    job_id: int
    n: int  # 1, 2, ...
    node_id: str
    dispatcher: str
    lease_token: int
    reason: Mapping[str, Any]  # the routing decision (ops/jobs/routing.py), shown by `jobs show`
    started_at: datetime
    ended_at: datetime | None = None
    outcome: AttemptOutcome = "running"
    exit_code: int | None = None
    stderr_tail: str = ""
    remote_pgid: int | None = None
    cleaned_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Load:
    """What the database knows about the nodes when a job is routed (read in the claim's
    transaction, so slots are counted across every dispatcher)."""

    now: datetime
    running: Mapping[str, int]  # node id -> attempts running there
    cooldown: Mapping[str, tuple[datetime, str]]  # node id -> (until, why)
    idle_since: Mapping[str, datetime]  # node id -> end of its latest attempt (last hour)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a claimed job goes, and why (stored in the attempt)."""

    node_id: str
    reason: Mapping[str, Any]


# Called inside the claim transaction for each claimable job, oldest first: a Route, or None
# when no node can take it now (the job stays queued and the next one is tried).
Router = Callable[[Job, Load], Route | None]


@dataclass(frozen=True, slots=True)
class Claim:
    job: Job  # as it is now: state running, attempts counted
    # The new attempt. n numbers every attempt of the job: n == job.attempts until the job
    # is retried (retry resets job.attempts; the attempts' history and numbering stay).
    attempt: Attempt
    token: int  # the fencing token: every later write for this run passes it


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One NOTIFY on `skeleton_jobs` (insert, or a change of state or cancel_requested)."""

    id: int
    state: JobState
    engine: str
    attempt: int
    cancel: bool


@dataclass(frozen=True, slots=True)
class Cleanup:
    """An ended attempt that may have left a process and a directory on its node."""

    job_id: int
    n: int
    node_id: str
    remote_pgid: int | None


class JobListener(Protocol):
    """A LISTEN on its own connection (autocommit)."""

    def wait(self, timeout: float) -> list[JobEvent]:
        """The events that arrived, waiting at most `timeout` s for the first one."""
        ...

    def close(self) -> None: ...


class JobStore(Protocol):
    """The queue. Every method raises RegistryError when the database cannot be used; a
    fenced write returns False (never raises) when the caller's lease is no longer valid."""

    # -- submitters
    def submit(self, spec: JobSpec, inputs: Sequence[tuple[str, bytes]], *,
               submitted_by: str, max_attempts: int) -> Job:
        """Insert a queued job and its input files (name, data) in one transaction."""
        ...

    def get(self, job_id: int) -> Job | None: ...

    def list(self, *, states: Sequence[str] = (), limit: int = 100) -> tuple[Job, ...]:
        """Newest first."""
        ...

    def attempts(self, job_id: int) -> tuple[Attempt, ...]: ...

    def files(self, job_id: int) -> tuple[JobFile, ...]: ...

    def file_data(self, job_id: int, kind: str, name: str) -> bytes | None: ...

    def cancel(self, job_id: int) -> Job | None:
        """Queued: cancelled now. Running: cancel_requested (the owner kills it). Final: as is."""
        ...

    def retry(self, job_id: int) -> Job | None:
        """Failed or cancelled: queued again with attempts reset; otherwise unchanged."""
        ...

    def listen(self) -> JobListener: ...

    # -- dispatchers
    def claim(self, dispatcher: str, *, lease: float, route: Router,
              limit: int = 16, only: Sequence[int] | None = None) -> Claim | None:
        """Take the oldest claimable job that `route` can place: queued ones, and running
        ones whose lease expired (their running attempt becomes `superseded`; one with
        cancel_requested becomes `cancelled` instead of running again, and None of it is
        returned). One transaction; serialised across dispatchers so slot counts hold."""
        ...

    def claim_many(self, dispatcher: str, *, lease: float, route: Router, most: int,
                   limit: int = 16, only: Sequence[int] | None = None) -> tuple[Claim, ...]:
        """Up to `most` claims as `claim` takes them, in one transaction (a claim costs
        several statements under the claim lock); `route` sees each claim's node counted
        as running in the Load of the next. `only`: queued jobs with these ids only (the
        dispatcher `jobs submit --wait` runs for its own jobs). Jobs no node can take now
        never hide the ones behind them (pages of `limit` are read)."""
        ...

    def renew(self, job_id: int, token: int, *, lease: float) -> bool: ...

    def started(self, job_id: int, token: int, *, remote_pgid: int | None) -> bool: ...

    def finish(self, job_id: int, token: int, *,
               state: Literal["done", "failed", "cancelled"], exit_code: int | None,
               error: str | None, stderr_tail: str, result: Mapping[str, Any],
               outputs: Sequence[tuple[str, bytes]] = (),
               remote_pgid: int | None = None, cleaned: bool = False) -> bool:
        """End the job and its running attempt, outputs stored in the same transaction.
        False: the lease is not ours any more (nothing written). `cleaned`: the node holds
        nothing of the attempt any more (it removed it when it reported the end, or it was
        killed); otherwise `cleanups()` lists it until a sweep has killed and removed it.
        `remote_pgid`: recorded on the attempt unless `started` did (an attempt that ended
        within its start has no separate `started` write)."""
        ...

    def lose(self, job_id: int, token: int, *, why: str, cooldown: float) -> JobState | None:
        """The node is gone: attempt `lost`, the node cooled down, the job queued again (or
        failed when max_attempts is reached). The new state, or None if not our lease."""
        ...

    def cleanups(self, *, limit: int = 50) -> tuple[Cleanup, ...]:
        """Ended attempts whose node may still hold their process or directory."""
        ...

    def cleaned(self, job_id: int, n: int) -> None: ...

    def dispatcher_seen(self, dispatcher: str, *, host: str, pid: int) -> None: ...

    def dispatcher_gone(self, dispatcher: str) -> None: ...

    def live_dispatchers(self, *, within: float) -> tuple[str, ...]: ...

    def close(self) -> None: ...


def events_until(listener: JobListener, done: Callable[[JobEvent], bool],
                 deadline: float, clock: Callable[[], float]) -> Iterator[JobEvent]:
    """Yield events until `done(event)` or the deadline (helper for `result(timeout)`)."""
    while (left := deadline - clock()) > 0:
        for event in listener.wait(min(left, 1.0)):
            yield event
            if done(event):
                return
