"""One claimed attempt, run on its node in its own thread: stage and start it, wait for it
in slices, and end it exactly once through the store's fenced writes.

The dispatcher's loop talks to a running attempt only through flags: `cancel` (a cancel was
requested: kill the remote command, end `cancelled`), `lease_lost` (a renewal matched no
row: another dispatcher owns the job now, so kill our remote command and write nothing),
`node_gone(why)` (the node's daemon went stale: the job is lost here and queued again), and
the dispatcher's stop (write nothing: the job is left to its lease). The thread looks at
them between wait slices, so each takes effect within about one slice.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from skeleton_app.config import Settings
from skeleton_app.engines import Engine
from skeleton_app.errors import NodeError, NodeErrorKind, RegistryError
from skeleton_app.nodes import Node
from skeleton_app.ops.jobs.node import AttemptEnd
from skeleton_app.registry.job_records import Claim, JobStore
from skeleton_app.ssh.runner import Runner

WAIT_SLICE = 1.0  # seconds per node.wait call: how soon a cancel or a lost lease acts
# The wait folded into the start (node.start_wait): a command that ends this soon (a short
# job) costs one ssh round trip and no `started` write; a longer one is recorded as started
# at most this much later than with a separate start.
START_SLICE = 0.5

Ending = Literal["done", "failed", "cancelled", "lost", "left", "fenced"]


class NodeApi(Protocol):
    """The node side (the module ops/jobs/node.py is one): injectable for tests."""

    def render(self, node: Node, job_id: int, n: int, engine: Engine, *,
               input_name: str | None = None, text: str | None = None) -> str: ...

    def start(self, runner: Runner, node: Node, job_id: int, n: int, command: str, *,
              input_name: str | None, input_data: bytes | None, timeout: float) -> int: ...

    def start_wait(self, runner: Runner, node: Node, job_id: int, n: int, command: str, *,
                   input_name: str | None, input_data: bytes | None, timeout: float,
                   engine: Engine, slice_s: float, max_bytes: int,
                   remove: bool = False) -> tuple[int, AttemptEnd | None]: ...

    def wait(self, runner: Runner, node: Node, job_id: int, n: int, *, engine: Engine,
             slice_s: float, max_bytes: int, remove: bool = False) -> AttemptEnd | None: ...

    def failure(self, end: AttemptEnd, engine: Engine,
                max_bytes: int | None = None) -> str | None: ...

    def kill(self, runner: Runner, node: Node, job_id: int, n: int, *,
             pgid: int | None) -> None: ...

    def preflight(self, runner: Runner, node: Node, engine: Engine) -> str | None: ...


@dataclass(frozen=True, slots=True)
class AttemptContext:
    """What every attempt of one dispatcher shares."""

    store: JobStore
    runner: Runner
    node_api: NodeApi
    settings: Settings
    halt: threading.Event  # the dispatcher stops: leave running jobs to their leases
    log: Callable[[str], None]
    forget_node: Callable[[str], None]  # check the node's preflight again
    clock: Callable[[], float] = time.monotonic


def output_name(engine: Engine) -> str:
    """The output's name in job_files and on the node: `output` + the engine's suffix."""
    return f"output{engine.output_suffix}"


class AttemptRun:
    """One attempt. `run()` is the thread body; `ending` says how it ended."""

    def __init__(self, ctx: AttemptContext, claim: Claim, node: Node):
        self.ctx = ctx
        self.claim = claim
        self.node = node
        self.job_id = claim.job.id
        self.n = claim.attempt.n
        self.token = claim.token
        self.cancel = threading.Event()
        self.lease_lost = threading.Event()
        self.finished = threading.Event()
        self.pgid: int | None = None
        self.ending: Ending | None = None
        self.last_renew = ctx.clock()  # the claim took the lease
        self.call_since: float | None = None  # when the node.wait in flight began
        self._gone: str | None = None
        self._end_lock = threading.Lock()
        self._taken = False  # the attempt's end is decided (written, or left): once only

    def node_gone(self, why: str) -> None:
        self._gone = why

    def abandon(self, why: str) -> None:
        """The node stopped answering while this thread waits on it (a call that will only
        fail after a connect timeout): lose the job now, from the dispatcher's loop. When
        the call returns, this thread writes nothing (its lease is gone anyway)."""
        self._lose(why)

    def _take(self) -> bool:
        with self._end_lock:
            taken, self._taken = self._taken, True
            return not taken

    def _leave(self, why: str) -> None:
        if self._take():
            self.ending = "left"
            self.ctx.log(f"{self.label()}: {why}, left to its lease")

    def label(self) -> str:
        return f"job {self.job_id} attempt {self.n} on {self.node.id}"

    # ------------------------------------------------------------------ the thread

    def run(self) -> None:
        try:
            self._run()
        except RegistryError as exc:
            # The database is away: nothing can be written; the lease expires and the job
            # is taken over (the orphan is then killed by a sweep).
            self._leave(f"registry error ({exc})")
        except Exception as exc:  # a bug here must end the job, not loop it forever
            self.ctx.log(f"{self.label()}: dispatcher error: {exc!r}")
            try:
                self._finish("failed", error=f"dispatcher error: {exc!r}"[:500])
            except Exception as inner:  # the store is broken too: leave it to the lease
                self._leave(f"could not record the error ({inner!r})")
        finally:
            self.finished.set()

    def _run(self) -> None:
        ctx, job = self.ctx, self.claim.job
        spec, engine = job.spec, job.spec.engine
        if job.cancel_requested:
            self._finish("cancelled", error="cancelled before it started")
            return
        data: bytes | None = None
        if spec.input_name:
            data = ctx.store.file_data(job.id, "input", spec.input_name)
            if data is None:
                self._finish("failed", error=f"input {spec.input_name} is missing from the"
                                             " queue")
                return
        try:
            command = ctx.node_api.render(self.node, job.id, self.n, engine,
                                          input_name=spec.input_name, text=spec.text)
        except ValueError as exc:  # the engine needs a value the job does not have
            self._finish("failed", error=str(exc))
            return
        deadline = ctx.clock() + engine.timeout
        try:
            # Start and a first short wait in one round trip; the node removes the attempt's
            # directory when it reports the end (as with wait's remove=True below).
            self.pgid, end = ctx.node_api.start_wait(
                ctx.runner, self.node, job.id, self.n, command, input_name=spec.input_name,
                input_data=data, timeout=ctx.settings.ssh.op_timeout, engine=engine,
                slice_s=min(START_SLICE, engine.timeout),
                max_bytes=ctx.settings.jobs.max_file_bytes, remove=True)
        except NodeError as exc:
            self._node_error(exc)
            return
        if end is not None:
            # Ended already: the end's fenced write records the pgid too (no `started`).
            ctx.log(f"{self.label()}: started (pgid {self.pgid})")
            self._ended(end, engine)
            return
        if not ctx.store.started(job.id, self.token, remote_pgid=self.pgid):
            self._lease_gone()
            return
        ctx.log(f"{self.label()}: started (pgid {self.pgid})")
        while not self._taken:
            if ctx.halt.is_set():
                self._leave("the dispatcher stops")
                return
            if self.lease_lost.is_set():
                self._lease_gone()
                return
            if self.cancel.is_set():
                self._kill_then("cancelled", error="cancelled")
                return
            if self._gone is not None:
                self._lose(self._gone)
                return
            if ctx.clock() > deadline:
                self._kill_then("failed", error=f"timed out after {engine.timeout:g} s")
                return
            self.call_since = ctx.clock()
            try:
                end = ctx.node_api.wait(ctx.runner, self.node, job.id, self.n, engine=engine,
                                        slice_s=WAIT_SLICE,
                                        max_bytes=ctx.settings.jobs.max_file_bytes,
                                        remove=True)
            except NodeError as exc:
                self._node_error(exc)
                return
            finally:
                self.call_since = None
            if end is not None:
                self._ended(end, engine)
                return

    # ------------------------------------------------------------------ endings

    def _ended(self, end: AttemptEnd, engine: Engine) -> None:
        # The node removed the attempt's directory when wait() saw the end (remove=True).
        ctx = self.ctx
        tail = end.stderr_tail[-ctx.settings.jobs.stderr_tail:]
        why = ctx.node_api.failure(end, engine, ctx.settings.jobs.max_file_bytes)
        if self.cancel.is_set():  # ended while a cancel was on its way: it is cancelled
            self._finish("cancelled", error="cancelled", exit_code=end.exit_code,
                         stderr_tail=tail, cleaned=True)
        elif why is None:
            name = output_name(engine)
            result = {"output": name, "size": len(end.output),
                      "sha256": hashlib.sha256(end.output).hexdigest(),
                      "seconds": round(end.seconds, 3), "node": self.node.id,
                      "attempt": self.n}
            self._finish("done", exit_code=0, stderr_tail=tail, result=result,
                         outputs=[(name, end.output)], cleaned=True)
        elif end.exit_code != 0 and engine.retry_on_exit:
            self._lose(why, cooldown=0.0)
        else:
            self._finish("failed", exit_code=end.exit_code, stderr_tail=tail, error=why,
                         cleaned=True)
            ctx.forget_node(self.node.id)  # a tool may have gone: check again

    def _finish(self, state: Literal["done", "failed", "cancelled"], *, error: str | None = None,
                exit_code: int | None = None, stderr_tail: str = "",
                result: dict[str, object] | None = None,
                outputs: list[tuple[str, bytes]] | None = None,
                cleaned: bool = False) -> None:
        if not self._take():
            return
        ok = self.ctx.store.finish(self.job_id, self.token, state=state, exit_code=exit_code,
                                   error=error, stderr_tail=stderr_tail, result=result or {},
                                   outputs=outputs or (), remote_pgid=self.pgid,
                                   cleaned=cleaned)
        if ok:
            self.ending = state
            self.ctx.log(f"{self.label()}: {state}" + (f" ({error})" if error else ""))
        else:
            # A late finisher: our lease was taken over; the other run's end stands.
            self.ending = "fenced"
            self.ctx.log(f"{self.label()}: ended {state}, but its lease was taken over:"
                         " result discarded")

    def _kill_then(self, state: Literal["failed", "cancelled"], *, error: str) -> None:
        # A kill that failed leaves the attempt to the clean-up sweep (cleaned_at NULL).
        self._finish(state, error=error, cleaned=self._kill())

    def _kill(self) -> bool:
        try:
            self.ctx.node_api.kill(self.ctx.runner, self.node, self.job_id, self.n,
                                   pgid=self.pgid)
            return True
        except NodeError as exc:  # the cleanup sweep kills it when the node answers again
            self.ctx.log(f"{self.label()}: could not kill it yet: {exc}")
            return False

    def _lease_gone(self) -> None:
        if not self._take():
            return
        self.ending = "fenced"
        self.ctx.log(f"{self.label()}: lease lost (another dispatcher owns the job):"
                     " killing our command")
        self._kill()

    def _node_error(self, exc: NodeError) -> None:
        if exc.kind is NodeErrorKind.INTERRUPTED:
            self._leave("interrupted")
            return
        self._lose(f"{exc.kind}: {exc}")

    def _lose(self, why: str, *, cooldown: float | None = None) -> None:
        if not self._take():
            return
        ctx = self.ctx
        state = ctx.store.lose(self.job_id, self.token, why=why[:500],
                               cooldown=ctx.settings.jobs.cooldown if cooldown is None
                               else cooldown)
        ctx.forget_node(self.node.id)
        if state is None:
            self.ending = "fenced"
            ctx.log(f"{self.label()}: lost ({why}), but its lease was taken over")
        else:
            self.ending = "lost"
            ctx.log(f"{self.label()}: lost ({why}); job now {state}")
