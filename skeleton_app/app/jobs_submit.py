"""What `jobs submit` checks, waits for and writes (`app.commands.jobs_submit` uses it):
`JobsRequest`, the submission checked before anything is queued; the wait for its jobs, each
output written as its job ends (under a temporary name, then renamed); `JobsDone`, what it
did. No Click here: every front end submits and waits the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from skeleton_app.errors import ExitCode, SkeletonError, UsageError

if TYPE_CHECKING:
    from skeleton_app.config import Settings
    from skeleton_app.ops.jobs.queue import JobHandle, JobResult, Jobs
    from skeleton_app.registry.job_records import Job

POLL = 0.25  # seconds between state checks while waiting for several jobs
CANCEL_GRACE = 5.0  # seconds an in-process dispatcher gets to kill what Ctrl-C cancelled
ResultFn = Callable[["JobResult", "str | None"], None]


@dataclass(frozen=True, slots=True)
class JobsRequest:
    """`jobs submit`, checked before anything is queued (a bad value: UsageError)."""

    engine: str
    inputs: tuple[str, ...] = ()  # files, one job each
    text: str | None = None  # an engine whose input is text: one job
    command: str | None = None  # `run`: the user's own command, with its role
    role: str | None = None
    output_name: str | None = None  # `run --output NAME`
    output_suffix: str = ".txt"  # of each local output file
    prints: bool = True  # the output is text for stdout unless --out says where
    out: str | None = None
    out_is_dir: bool = False
    wait: bool = False
    timeout: float | None = None
    cancel_on_interrupt: bool = False

    @classmethod
    def parse(cls, settings: Settings, engine: str, args: Sequence[str], *,
              role: str | None = None, input_file: str | None = None,
              output_name: str | None = None, out: str | None = None, wait: bool = False,
              timeout: float | None = None,
              cancel_on_interrupt: bool = False) -> JobsRequest:
        wait = wait or out is not None  # --out writes the outputs: it waits for them
        if not wait and (timeout is not None or cancel_on_interrupt):
            flag = "--timeout" if timeout is not None else "--cancel-on-interrupt"
            raise UsageError(f"{flag} needs --wait (or --out)")
        fields: dict[str, Any] = {}
        if engine == "run":
            command = " ".join(args).strip()
            if not command:
                raise UsageError("submit run: no command: give it after --, e.g."
                                 " -- 'my-tool {input} > {output}'")
            if not role:
                raise UsageError("submit run: --role ROLE is required (the nodes that may"
                                 " run the command)")
            to_file = output_name is not None or "{output}" in command
            fields = {"inputs": (input_file,) if input_file is not None else (),
                      "command": command, "role": role, "output_name": output_name,
                      "output_suffix": os.path.splitext(output_name or "")[1] or ".txt",
                      "prints": not to_file}
        else:
            if role is not None or input_file is not None or output_name is not None:
                raise UsageError("--role, --input and --output are for `submit run` only")
            known = {e.name: e for e in settings.engines}
            spec = known.get(engine)
            if spec is None:
                names = ", ".join(sorted(known)) or "none configured"
                raise UsageError(f"unknown engine {engine!r} (engines: {names}; or run)")
            fields = {"output_suffix": spec.output_suffix, "prints": spec.output == "stdout"}
            if spec.input == "text":
                text = " ".join(args)
                if not text.strip():
                    raise UsageError(f"submit {engine}: no text given")
                fields["text"] = text
            elif spec.input == "none":
                if args:
                    raise UsageError(f"submit {engine}: takes no input, got {args[0]!r}")
            elif not args:
                raise UsageError(f"submit {engine}: no input file given")
            else:
                fields["inputs"] = tuple(args)
        request = cls(engine=engine, out=out, wait=wait, timeout=timeout,
                      cancel_on_interrupt=cancel_on_interrupt, **fields)
        return request._check_out()

    @classmethod
    def from_flags(cls, settings: Settings, engine: str | None, *,
                   inputs: Sequence[str] = (), text: str | None = None,
                   command: str | None = None, **options: Any) -> JobsRequest:
        """The same request from named flags (`inv jobs-submit --engine stt --input a.wav`,
        `--text`, `--command`) instead of positional arguments."""
        if not engine:
            raise UsageError("--engine is required")
        if engine == "run":
            if len(inputs) > 1:
                raise UsageError("run: one --input at most")
            return cls.parse(settings, engine, (command,) if command else (),
                             input_file=inputs[0] if inputs else None, **options)
        if command is not None:
            raise UsageError("--command is for --engine run only")
        if text is not None and inputs:
            raise UsageError("give --text or --input, not both")
        return cls.parse(settings, engine, (text,) if text is not None else inputs, **options)

    def _check_out(self) -> JobsRequest:
        """Where outputs go: several inputs need a directory; an existing directory (or a
        path ending in /) gets `<input stem><suffix>` per job; else it is the file."""
        if self.out is None:
            return self
        if not self.out.strip():
            raise UsageError("--out: empty path")
        is_dir = os.path.isdir(self.out) or self.out.endswith(os.sep) or len(self.inputs) > 1
        if is_dir and os.path.exists(self.out) and not os.path.isdir(self.out):
            raise UsageError(f"--out {self.out}: not a directory (several inputs write one"
                             " file each into a directory)")
        parent = os.path.dirname(os.path.abspath(self.out.rstrip(os.sep) or os.sep))
        if not os.path.isdir(parent):
            raise UsageError(f"--out {self.out}: no directory {parent}")
        if is_dir:
            names = [self._stem(i) for i in range(len(self.inputs))]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise UsageError(f"--out {self.out}: two inputs would both write"
                                 f" {twice[0]}{self.output_suffix}")
        return dataclasses.replace(self, out_is_dir=is_dir)

    def _stem(self, index: int) -> str:
        return os.path.splitext(os.path.basename(self.inputs[index]))[0]

    def output_path(self, index: int, job_id: int) -> str | None:
        """Where job number `index` of this request writes its output (None: printed)."""
        if self.out is not None and not self.out_is_dir:
            return self.out
        if self.out is None and self.prints:
            return None
        if self.output_name and self.out is None:
            return self.output_name
        stem = self._stem(index) if index < len(self.inputs) else f"job-{job_id}"
        return os.path.join(self.out or ".", stem + self.output_suffix)


@dataclass(frozen=True, slots=True)
class JobsDone:
    """What `jobs submit` did: the jobs queued and, with --wait, how each ended."""

    submitted: tuple[Job, ...]
    waited: bool = False
    results: tuple[JobResult, ...] = ()  # in the order the jobs ended
    written: Mapping[int, str] = dataclasses.field(default_factory=dict)  # job id -> path
    left: tuple[Job, ...] = ()  # not ended when the wait stopped (timeout, Ctrl-C)
    cancelled: tuple[Job, ...] = ()  # --cancel-on-interrupt
    interrupted: bool = False
    timed_out: bool = False
    dispatcher_started: bool = False  # no dispatcher was running: one ran in this process

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        if self.timed_out or any(not r.ok for r in self.results):
            return ExitCode.FAILED
        return ExitCode.OK


def wait(jobs: Jobs, request: JobsRequest, handles: Sequence[JobHandle],
         on_result: ResultFn | None, *, started: bool) -> JobsDone:
    """Wait for `handles` until each ended, the request's timeout or Ctrl-C; write each
    output as its job ends. What did not end is left as it is (queued or running), or
    cancelled on Ctrl-C with `cancel_on_interrupt`."""
    deadline = None if request.timeout is None else time.monotonic() + request.timeout
    results: list[JobResult] = []
    written: dict[int, str] = {}
    left = dict(enumerate(handles))
    interrupted = timed_out = False
    try:
        while left:
            for index, result in _ended(left, deadline):
                del left[index]
                path = request.output_path(index, result.job.id)
                if result.ok and path is not None:
                    write_atomic(path, result.output or b"", result.job.id)
                    written[result.job.id] = path
                results.append(result)
                if on_result is not None:
                    on_result(result, path if result.job.id in written else None)
            if left and deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError
            if left and len(handles) > 1:
                time.sleep(POLL)
    except TimeoutError:
        timed_out = True
    except KeyboardInterrupt:
        interrupted = True
    cancelled: list[Job] = []
    still: list[Job] = []
    for handle in left.values():
        if interrupted and request.cancel_on_interrupt:
            cancelled.append(handle.cancel())
        else:
            still.append(_last_state(handle))
    if started and cancelled:
        cancelled = _until_final(left.values(), cancelled)
    return JobsDone(tuple(h.submitted for h in handles), True, tuple(results), written,
                    tuple(still), tuple(cancelled), interrupted, timed_out, started)


def _ended(left: Mapping[int, JobHandle],
           deadline: float | None) -> Iterator[tuple[int, JobResult]]:
    """The jobs of `left` that have ended. One job: wait for it (LISTEN, in the facade);
    several: check each once (the caller polls), so outputs are written as they end."""
    if len(left) == 1:
        ((index, handle),) = left.items()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        yield index, handle.result(timeout=timeout)
        return
    for index, handle in list(left.items()):
        if handle.state().final:
            yield index, handle.result(timeout=10.0)


def _until_final(handles: Iterable[JobHandle], jobs: list[Job]) -> list[Job]:
    """The dispatcher of this process owns the jobs just cancelled: give it a moment to
    kill their commands on the nodes before it stops (else they run on until a lease
    expires and another dispatcher kills them)."""
    deadline = time.monotonic() + CANCEL_GRACE
    pending = list(handles)
    while any(not j.final for j in jobs) and time.monotonic() < deadline:
        time.sleep(POLL)
        jobs = [_last_state(h) for h in pending]
    return jobs


def _last_state(handle: JobHandle) -> Job:
    try:
        return handle.state()
    except SkeletonError:
        return handle.submitted


def write_atomic(path: str, data: bytes, job_id: int) -> None:
    """Write `path` under a temporary name, then rename: a reader never sees half a file."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    # A fresh name (O_EXCL, never a planted symlink in a shared directory), then a rename;
    # mode 0600, as mkstemp makes it: a transcript is private until its owner shares it.
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(dir=parent or ".", prefix=f".{os.path.basename(path)}.",
                                   suffix=f".tmp-{job_id}")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
