"""`Cluster.jobs`: the facade submitters use (the CLI, `inv`, `fab`, Python).

    with Cluster.from_config() as cluster:
        handle = cluster.jobs.submit("stt", "meeting.wav")
        print(handle.result(timeout=120).text)

Bad input (unknown engine, missing or unreadable file, empty text, no registry, no node
with the engine's role) raises UsageError before anything is queued; a registry that does
not answer raises RegistryError.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from skeleton_app.engines import Engine
from skeleton_app.errors import RegistryError, UsageError
from skeleton_app.ops.jobs import routing
from skeleton_app.ops.jobs.submission import (
    Prepared,
    build_engine,
    check_input,
    max_attempts_of,
    prepare,
)
from skeleton_app.registry.job_records import (
    Attempt,
    Job,
    JobEvent,
    JobFile,
    JobListener,
    JobStore,
)

if TYPE_CHECKING:
    from skeleton_app.cluster import Cluster
    from skeleton_app.config import Settings
    from skeleton_app.ops.jobs.dispatcher import Dispatcher
    from skeleton_app.ops.jobs.fleet import NodeSource


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


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
        job = self.job
        return {
            **job.as_dict(),
            "attempts": [{
                "n": a.n, "node": a.node_id, "dispatcher": a.dispatcher,
                "started_at": _iso(a.started_at), "ended_at": _iso(a.ended_at),
                "outcome": a.outcome, "exit_code": a.exit_code, "stderr_tail": a.stderr_tail,
                "remote_pgid": a.remote_pgid, "cleaned_at": _iso(a.cleaned_at),
                "why": routing.explain(a.reason), "reason": dict(a.reason),
            } for a in self.attempts],
            "files": [{"kind": f.kind, "name": f.name, "sha256": f.sha256, "size": f.size}
                      for f in self.files],
        }


class JobHandle:
    """A submitted job."""

    def __init__(self, jobs: Jobs, job: Job):
        self._jobs = jobs
        self.id = job.id
        self.submitted = job

    def state(self) -> Job:
        return self._jobs.get(self.id)

    def result(self, timeout: float | None = None) -> JobResult:
        """Wait (LISTEN, with a poll as fallback) until the job is final; TimeoutError."""
        return self._jobs.wait(self.id, timeout=timeout)

    def cancel(self) -> Job:
        return self._jobs.cancel(self.id)

    def __repr__(self) -> str:
        return f"JobHandle({self.id}, {self.submitted.engine})"


def _open_job_store(settings: Settings) -> JobStore:
    from skeleton_app.registry.jobs import open_job_store  # psycopg only when needed

    return open_job_store(settings)


class Jobs:
    """The queue of one cluster (its registry's PostgreSQL). `store` and `registry` may be
    given (tests, or a caller's own connections); otherwise both are opened from the
    settings on first use and closed by `close()`."""

    def __init__(self, cluster: Cluster, store: JobStore | None = None, *,
                 registry: NodeSource | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._cluster = cluster
        self._store = store
        self._own_store = False
        self._registry = registry
        self._own_registry = False
        self._clock = clock

    @property
    def settings(self) -> Settings:
        return self._cluster.settings

    def _need_registry(self) -> None:
        if self._store is None and not self.settings.registry.dsn:
            raise UsageError("no registry configured: jobs live in the registry's PostgreSQL"
                             " (set registry.dsn in config.yaml or SKELETON_DATABASE_URL)")

    @property
    def store(self) -> JobStore:
        """The queue's store (opened from settings.registry.dsn on first use)."""
        if self._store is None:
            self._need_registry()
            self._store = _open_job_store(self.settings)
            self._own_store = True
        return self._store

    def _nodes(self) -> NodeSource:
        if self._registry is None:
            self._need_registry()
            from skeleton_app.registry import open_registry  # psycopg only when needed

            self._registry = cast("NodeSource", open_registry(self.settings))
            self._own_registry = True
        return self._registry

    # ------------------------------------------------------------------ submit

    def submit(self, engine: str, input: str | os.PathLike[str] | None = None, *,
               text: str | None = None, command: str | None = None,
               role: str | None = None, output_suffix: str | None = None,
               max_attempts: int | None = None) -> JobHandle:
        """Queue one job. `engine="run"` with `command` (placeholders {input} {output}) and
        `role` is a command of the user's own."""
        chosen = build_engine(self.settings, engine, command=command, role=role, input=input,
                              output_suffix=output_suffix)
        prepared = prepare(chosen, input, text, max_bytes=self.settings.jobs.max_file_bytes)
        attempts = max_attempts_of(self.settings, max_attempts)
        self._check_nodes(chosen)
        return self._enqueue(prepared, attempts)

    def submit_many(self, engine: str, inputs: Sequence[str | os.PathLike[str]],
                    **kwargs: Any) -> list[JobHandle]:
        """All inputs are checked before the first is queued: one bad file queues nothing."""
        if not inputs:
            raise UsageError("no input files given")
        first = inputs[0]
        chosen = build_engine(self.settings, engine, command=kwargs.get("command"),
                              role=kwargs.get("role"), input=first,
                              output_suffix=kwargs.get("output_suffix"))
        unknown = set(kwargs) - {"command", "role", "output_suffix", "max_attempts"}
        if unknown:
            raise UsageError(f"submit_many: unknown argument {sorted(unknown)[0]}")
        limit = self.settings.jobs.max_file_bytes
        for path in inputs:
            check_input(path, limit)
        attempts = max_attempts_of(self.settings, kwargs.get("max_attempts"))
        self._check_nodes(chosen)
        handles: list[JobHandle] = []
        for path in inputs:
            try:
                handles.append(self._enqueue(prepare(chosen, path, None, max_bytes=limit),
                                             attempts))
            except (UsageError, RegistryError) as exc:
                if not handles:
                    raise
                # Checked above, yet changed since (or the registry went away): say what is
                # queued already, so nothing is queued twice by a second try.
                ids = ", ".join(str(h.id) for h in handles)
                raise type(exc)(f"{exc} (queued before it: job{'s' * (len(handles) > 1)}"
                                f" {ids})") from exc
        return handles

    def _check_nodes(self, engine: Engine) -> None:
        entries, _warnings = self._nodes().list_entries(enabled_only=False)
        with_role = [e for e in entries if engine.role in e.node.roles]
        if any(e.approved and e.enabled for e in with_role):
            return
        idle = ", ".join(f"{e.node.id} ({e.state})" for e in with_role[:5])
        raise UsageError(f"no enabled node has role {engine.role} (engine {engine.name})"
                         + (f": {idle}" if idle else ""))

    def _enqueue(self, prepared: Prepared, max_attempts: int) -> JobHandle:
        from skeleton_app.registry.runs import default_who

        job = self.store.submit(prepared.spec, prepared.inputs, submitted_by=default_who(),
                                max_attempts=max_attempts)
        return JobHandle(self, job)

    # ------------------------------------------------------------------ read, change

    def get(self, job_id: int) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise UsageError(f"no job {job_id}")
        return job

    def list(self, *, states: Sequence[str] = (), limit: int = 100) -> tuple[Job, ...]:
        return self.store.list(states=states, limit=limit)

    def show(self, job_id: int) -> JobDetail:
        job = self.get(job_id)
        return JobDetail(job=job, attempts=self.store.attempts(job_id),
                         files=self.store.files(job_id))

    def cancel(self, job_id: int) -> Job:
        job = self.store.cancel(job_id)
        if job is None:
            raise UsageError(f"no job {job_id}")
        return job

    def retry(self, job_id: int) -> Job:
        job = self.store.retry(job_id)
        if job is None:
            raise UsageError(f"no job {job_id}")
        return job

    def result_of(self, job: Job) -> JobResult:
        """A final job with its output read back (None unless it is done)."""
        if job.state != "done":
            return JobResult(job=job, output=None, output_name=None)
        name = job.result.get("output") if isinstance(job.result, Mapping) else None
        if not isinstance(name, str):
            outputs = [f for f in self.store.files(job.id) if f.kind == "output"]
            name = outputs[0].name if outputs else None
        data = self.store.file_data(job.id, "output", name) if name else None
        return JobResult(job=job, output=data, output_name=name)

    def wait(self, job_id: int, *, timeout: float | None = None) -> JobResult:
        """Wait until the job is final (LISTEN, polling every jobs.poll s as a fallback)."""
        deadline = None if timeout is None else self._clock() + timeout
        poll = max(self.settings.jobs.poll, 0.05)
        listener: JobListener | None = None
        with contextlib.suppress(RegistryError):
            listener = self.store.listen()  # before the first read: no end slips between
        try:
            job = self.get(job_id)
            while not job.final:
                left = None if deadline is None else deadline - self._clock()
                if left is not None and left <= 0:
                    raise TimeoutError(f"job {job_id} is still {job.state} after"
                                       f" {timeout:g} s")
                step = poll if left is None else min(poll, left)
                if listener is not None:
                    try:
                        listener.wait(step)
                    except RegistryError:
                        listener = None
                else:
                    time.sleep(step)
                job = self.get(job_id)
        finally:
            if listener is not None:
                with contextlib.suppress(Exception):
                    listener.close()
        return self.result_of(job)

    def watch(self) -> Iterator[JobEvent]:
        """State changes as they happen, until the caller stops iterating."""
        listener = self.store.listen()
        try:
            while True:
                yield from listener.wait(1.0)
        finally:
            listener.close()

    # ------------------------------------------------------------------ dispatchers

    def dispatcher(self, **kwargs: Any) -> Dispatcher:
        """A dispatcher for this cluster (`skeleton jobs dispatch`, or in-process for --wait).
        It shares this facade's store (a JobStore is used from several threads)."""
        from skeleton_app.ops.jobs.dispatcher import Dispatcher

        if self._registry is not None and not self._own_registry:
            kwargs.setdefault("registry", self._registry)
        return Dispatcher(self._cluster, self.store, **kwargs)

    def dispatcher_running(self) -> bool:
        """Is any dispatcher alive (seen within the lease)?"""
        return bool(self.store.live_dispatchers(within=self.settings.jobs.lease))

    def close(self) -> None:
        for own, thing in ((self._own_store, self._store),
                           (self._own_registry, self._registry)):
            close = getattr(thing, "close", None) if own else None
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
        if self._own_store:
            self._store, self._own_store = None, False
        if self._own_registry:
            self._registry, self._own_registry = None, False
