"""Our side of the jobs case: the queue's public API, in this process.

    with Ours.open(config) as ours:          # Cluster + Jobs facade + one running dispatcher
        ours.noop(400)                        # wall time of submit-all, wait-all
        ours.latencies(100)                   # submit → start of one job at a time (ms)
        ours.transcribe(wavs)                 # transcripts of real stt jobs

Written against the contracts of issue 14 (skeleton_app/ops/jobs/queue.py, dispatcher.py,
registry/job_records.py). Until the queue is implemented those raise NotImplementedError;
every entry point here turns that (and any other reason the API cannot be used: an import
error, a missing migration) into `OursUnavailable`, so the case reports "not available"
and still measures the peers.

Waiting for 400 jobs uses one LISTEN connection for all of them (the job events carry the
new state), with a poll of the final jobs as the fallback NOTIFY needs. Waiting with
`handle.result()` per job would time our API's per-call set-up 400 times, not the queue.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from skeleton_app.errors import SkeletonError

if TYPE_CHECKING:
    from skeleton_app.cluster import Cluster
    from skeleton_app.ops.jobs.dispatcher import DispatchOutcome
    from skeleton_app.ops.jobs.queue import JobHandle, Jobs
    from skeleton_app.registry.job_records import JobListener, JobStore

NOOP_ROLE = "testbed"  # every testbed host has it
FINAL = ("done", "failed", "cancelled")


class OursUnavailable(Exception):
    """Our side cannot run: the API is not implemented yet, or it failed. The text says why."""


@dataclass(frozen=True, slots=True)
class Transcripts:
    seconds: float
    texts: tuple[str, ...]  # in input order


def _unavailable(exc: BaseException) -> OursUnavailable:
    if isinstance(exc, NotImplementedError):
        return OursUnavailable("not available: the jobs API is not implemented yet"
                               f" (NotImplementedError{': ' + str(exc) if str(exc) else ''})")
    return OursUnavailable(f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}")


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Anything our side raises becomes OursUnavailable (the peers still run)."""
    try:
        yield
    except OursUnavailable:
        raise
    except (NotImplementedError, SkeletonError, ImportError, AttributeError, TimeoutError,
            OSError, ValueError) as exc:
        raise _unavailable(exc) from exc


def jobs_of(cluster: Cluster) -> Jobs:
    """`cluster.jobs` when Cluster has it, else the facade built the way it would be."""
    from skeleton_app.ops.jobs.queue import Jobs

    found = getattr(cluster, "jobs", None)
    return found if isinstance(found, Jobs) else Jobs(cluster)


class Ours:
    """A cluster, its queue and one dispatcher running in this process (a thread)."""

    def __init__(self, cluster: Cluster, jobs: Jobs, stop: Callable[[], DispatchOutcome]):
        self.cluster = cluster
        self.jobs = jobs
        self._stop = stop
        self.outcome: DispatchOutcome | None = None

    @classmethod
    @contextlib.contextmanager
    def open(cls, config: Path) -> Iterator[Ours]:
        with guarded():
            from skeleton_app.cluster import Cluster

            cluster = Cluster.from_config(config, env={})
        try:
            with guarded():
                jobs = jobs_of(cluster)
                stop = jobs.dispatcher().start()
            ours = cls(cluster, jobs, stop)
            try:
                yield ours
            finally:
                with contextlib.suppress(Exception):
                    ours.outcome = stop()
        finally:
            cluster.close()

    @property
    def store(self) -> JobStore:
        return self.jobs.store

    # ---------------------------------------------------------------- submit all, wait all

    def _wait_all(self, listener: JobListener, ids: Sequence[int], timeout: float) -> None:
        """Until every job in `ids` is final (events, and a poll every second)."""
        pending = set(ids)
        deadline = time.monotonic() + timeout
        next_poll = time.monotonic() + 1.0
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OursUnavailable(f"{len(pending)} of {len(ids)} jobs not final after"
                                      f" {timeout:.0f} s")
            for event in listener.wait(min(left, 0.5)):
                if event.state in FINAL:
                    pending.discard(event.id)
            if pending and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + 1.0
                # NOTIFY is lost while a connection is down: ask the table too.
                for job in self.store.list(states=FINAL, limit=len(ids) + 100):
                    pending.discard(job.id)
        bad = [j for j in (self.store.get(i) for i in ids) if j is None or j.state != "done"]
        if bad:
            first = bad[0]
            why = "missing" if first is None else f"{first.state}: {first.error or ''}"
            raise OursUnavailable(f"{len(bad)} of {len(ids)} jobs did not end done"
                                  f" (e.g. {why.strip()})")

    def noop(self, count: int, *, timeout: float = 600.0) -> float:
        """Seconds to submit `count` jobs running `true` and see them all done."""
        with guarded():
            started = time.perf_counter()
            listener = self.store.listen()
            try:
                handles = [self.jobs.submit("run", command="true", role=NOOP_ROLE)
                           for _ in range(count)]
                self._wait_all(listener, [h.id for h in handles], timeout)
            finally:
                listener.close()
            return time.perf_counter() - started

    # ---------------------------------------------------------------- submit → start

    def latencies(self, count: int, *, timeout: float = 60.0) -> list[float]:
        """Submit → start (ms) of `count` no-op jobs, one at a time, each submitted when the
        one before is done: the dispatcher is idle and waiting when each arrives. Start is
        the attempt's `started_at` (written when the dispatcher claims and routes the job),
        submit the job's `submitted_at`; both are the database's clock."""
        with guarded():
            handles: list[JobHandle] = []
            listener = self.store.listen()
            try:
                for _ in range(count):
                    handle = self.jobs.submit("run", command="true", role=NOOP_ROLE)
                    handles.append(handle)
                    self._wait_all(listener, [handle.id], timeout)
            finally:
                listener.close()
            values: list[float] = []
            for handle in handles:
                attempts = self.store.attempts(handle.id)
                if not attempts:
                    raise OursUnavailable(f"job {handle.id} is done but has no attempt")
                first = min(attempts, key=lambda a: a.n)
                delta = first.started_at - handle.submitted.submitted_at
                values.append(delta.total_seconds() * 1000)
            return values

    # ---------------------------------------------------------------- real transcriptions

    def transcribe(self, wavs: Sequence[Path], *, timeout: float = 900.0) -> Transcripts:
        """Seconds from the first submit to every transcript in hand, and the transcripts."""
        with guarded():
            started = time.perf_counter()
            listener = self.store.listen()
            try:
                handles = [self.jobs.submit("stt", wav) for wav in wavs]
                self._wait_all(listener, [h.id for h in handles], timeout)
            finally:
                listener.close()
            texts = tuple(h.result(timeout=30).text for h in handles)
            return Transcripts(time.perf_counter() - started, texts)

