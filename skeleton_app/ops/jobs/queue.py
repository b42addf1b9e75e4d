"""`Cluster.jobs`: the facade submitters use (the CLI, `inv`, `fab`, Python).

    with Cluster.from_config() as cluster:
        handle = cluster.jobs.submit("stt", "meeting.wav")
        print(handle.result(timeout=120).text)

Bad input (unknown engine, missing or unreadable file, empty text, no registry, no node
with the engine's role) raises UsageError before anything is queued; a registry that does
not answer raises RegistryError.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from skeleton_app.registry.job_records import Attempt, Job, JobEvent, JobFile, JobStore

if TYPE_CHECKING:
    from skeleton_app.cluster import Cluster
    from skeleton_app.ops.jobs.dispatcher import Dispatcher


@dataclass(frozen=True, slots=True)
class JobResult:
    """A job that ended: its row, and its output (stdout or file) when it is done."""

    job: Job
    output: bytes | None
    output_name: str | None  # e.g. "output.txt", "output.wav"

    @property
    def ok(self) -> bool:
        return self.job.state == "done"

    @property
    def text(self) -> str:
        """The output decoded as UTF-8 (a transcript), "" when there is none."""
        return (self.output or b"").decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class JobDetail:
    """`jobs show`: the job, every attempt (node, why, start/end, exit, stderr tail), files."""

    job: Job
    attempts: tuple[Attempt, ...]
    files: tuple[JobFile, ...]

    def as_dict(self) -> dict[str, Any]:
        raise NotImplementedError


class JobHandle:
    """A submitted job."""

    def __init__(self, jobs: Jobs, job: Job):
        self._jobs = jobs
        self.id = job.id
        self.submitted = job

    def state(self) -> Job:
        raise NotImplementedError

    def result(self, timeout: float | None = None) -> JobResult:
        """Wait (LISTEN, with a poll as fallback) until the job is final; TimeoutError."""
        raise NotImplementedError

    def cancel(self) -> Job:
        raise NotImplementedError


class Jobs:
    """The queue of one cluster (its registry's PostgreSQL)."""

    def __init__(self, cluster: Cluster, store: JobStore | None = None):
        self._cluster = cluster
        self._store = store

    @property
    def store(self) -> JobStore:
        """The queue's store (opened from settings.registry.dsn on first use)."""
        raise NotImplementedError

    def submit(self, engine: str, input: str | os.PathLike[str] | None = None, *,
               text: str | None = None, command: str | None = None,
               role: str | None = None, output_suffix: str | None = None,
               max_attempts: int | None = None) -> JobHandle:
        """Queue one job. `engine="run"` with `command` (placeholders {input} {output}) and
        `role` is a command of the user's own."""
        raise NotImplementedError

    def submit_many(self, engine: str, inputs: Sequence[str | os.PathLike[str]],
                    **kwargs: Any) -> list[JobHandle]:
        """All inputs are checked before the first is queued: one bad file queues nothing."""
        raise NotImplementedError

    def get(self, job_id: int) -> Job:
        raise NotImplementedError

    def list(self, *, states: Sequence[str] = (), limit: int = 100) -> tuple[Job, ...]:
        raise NotImplementedError

    def show(self, job_id: int) -> JobDetail:
        raise NotImplementedError

    def cancel(self, job_id: int) -> Job:
        raise NotImplementedError

    def retry(self, job_id: int) -> Job:
        raise NotImplementedError

    def watch(self) -> Iterator[JobEvent]:
        """State changes as they happen, until the caller stops iterating."""
        raise NotImplementedError

    def dispatcher(self, **kwargs: Any) -> Dispatcher:
        """A dispatcher for this cluster (`skeleton jobs dispatch`, or in-process for --wait)."""
        raise NotImplementedError

    def dispatcher_running(self) -> bool:
        """Is any dispatcher alive (seen within the lease)?"""
        raise NotImplementedError
