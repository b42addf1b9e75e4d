"""`skeleton jobs ...` for people and scripts: the list table, `show` with every attempt
(node, why that node, start/end, exit, stderr tail), the lines of `submit --wait`, `watch`
and `dispatch`, and the `--json` shapes of list, show and submit.

Everything a node or a submitter wrote (labels, errors, stderr tails, transcripts shown in
a table) is passed through `sanitize`: no escape sequence reaches the terminal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from skeleton_app.app.views.common import format_bytes, sanitize, table

if TYPE_CHECKING:
    from skeleton_app.app.jobs_submit import JobsDone
    from skeleton_app.ops.jobs.dispatcher import DispatchOutcome
    from skeleton_app.ops.jobs.queue import JobDetail, JobResult
    from skeleton_app.registry.job_records import Job, JobEvent

STDERR_LINES = 10  # of each attempt's stderr tail in `show`


# ---------------------------------------------------------------- JSON


def job_dict(job: Job) -> dict[str, Any]:
    """A job's fields, keyed as `JobDetail.as_dict()` keys them (`show --json`), whose
    `attempts` is the list of attempts: the count is `attempts_made`."""
    return job.as_dict()


def job_json(job: Job) -> str:
    """`jobs cancel|retry --json`: the job as it is now (`job_dict`)."""
    return json.dumps(job_dict(job), indent=2)


def list_json(jobs: Iterable[Job]) -> str:
    return json.dumps([job_dict(j) for j in jobs], indent=2)


def show_json(detail: JobDetail) -> str:
    """`jobs show --json`: the facade's own shape (job, attempts with `why`, files)."""
    return json.dumps(detail.as_dict(), indent=2)


def submit_json(done: JobsDone, *, prints: bool) -> str:
    """`jobs submit --json`: every job as last seen, with where its output went (`output`: a
    path written) or, for a printed output, the text itself (`output_text`)."""
    latest: dict[int, Job] = {j.id: j for j in done.submitted}
    outputs: dict[int, JobResult] = {}
    for result in done.results:
        latest[result.job.id] = result.job
        outputs[result.job.id] = result
    for job in (*done.left, *done.cancelled):
        latest[job.id] = job
    rows = []
    for job in latest.values():
        ended = outputs.get(job.id)
        text = ended.text if ended is not None and ended.ok and prints else None
        rows.append({**job_dict(job), "output": done.written.get(job.id),
                     "output_text": text})
    return json.dumps({"jobs": rows, "waited": done.waited, "interrupted": done.interrupted,
                       "timed_out": done.timed_out,
                       "dispatcher_started": done.dispatcher_started}, indent=2)


# ---------------------------------------------------------------- routing reasons


def reason_line(reason: Mapping[str, Any]) -> str:
    """One line from an attempt's routing reason: the routing module's own `explain`."""
    from skeleton_app.ops.jobs.routing import explain

    return sanitize(explain(reason))


def _clock(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone().strftime("%H:%M:%S")


def _day_clock(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _took(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{(end - start).total_seconds():.1f}s"


def _what(job: Job) -> str:
    """The job's label: its input file's name or the start of its text."""
    return job.spec.label or job.spec.input_name or ""


def jobs_table(jobs: Iterable[Job], out: IO[str]) -> None:
    """`jobs list`: newest first, one row each."""
    rows = [[str(j.id), j.engine, j.state + (" (cancel requested)" if j.cancel_requested
                                             and not j.final else ""),
             j.node or "-", f"{j.attempts}/{j.max_attempts}", _day_clock(j.submitted_at),
             _took(j.submitted_at, j.finished_at), _what(j)[:40],
             (j.error or "")[:60]] for j in jobs]
    table(None, ["job", "engine", "state", "node", "attempts", "submitted", "took", "input",
                 "error"], rows, file=out)


def show_text(detail: JobDetail, out: IO[str]) -> None:
    """`jobs show`: the job, then each attempt (node, why, start/end, exit), each stderr
    tail, and the files."""
    job = detail.job
    where = f" on {job.node}" if job.node else ""
    out.write(f"job {job.id}: {job.engine} (role {job.role}), {job.state}{where},"
              f" {job.attempts} of at most {job.max_attempts} attempts\n")
    out.write(f"  input: {sanitize(_what(job)) or '-'}\n")
    out.write(f"  submitted {_day_clock(job.submitted_at)} by {sanitize(job.submitted_by)}")
    if job.finished_at is not None:
        out.write(f", ended {_day_clock(job.finished_at)}"
                  f" ({_took(job.submitted_at, job.finished_at)})")
    out.write("\n")
    if job.cancel_requested and not job.final:
        out.write("  cancel requested: its dispatcher is stopping it\n")
    if job.exit_code is not None:
        out.write(f"  exit {job.exit_code}\n")
    if job.error:
        out.write(f"  error: {sanitize(job.error)}\n")
    if detail.attempts:
        rows = [[str(a.n), a.node_id, a.outcome, _clock(a.started_at), _clock(a.ended_at),
                 _took(a.started_at, a.ended_at),
                 "-" if a.exit_code is None else str(a.exit_code), reason_line(a.reason)]
                for a in detail.attempts]
        table(None, ["#", "node", "outcome", "start", "end", "took", "exit", "why"], rows,
              file=out)
    for a in detail.attempts:
        tail = a.stderr_tail.rstrip("\n").splitlines()[-STDERR_LINES:]
        if tail:
            out.write(f"attempt {a.n} on {a.node_id}, stderr (last {len(tail)} lines):\n")
            out.writelines(f"  | {sanitize(line)}\n" for line in tail)
    for f in detail.files:
        out.write(f"{f.kind}: {sanitize(f.name)} ({format_bytes(f.size)},"
                  f" sha256 {f.sha256[:16]})\n")


def queued_lines(done: JobsDone) -> list[str]:
    """`submit` without waiting: one line per job queued."""
    return [f"job {j.id} queued: {j.engine} {sanitize(_what(j))}".rstrip()
            for j in done.submitted]


class ResultPrinter:
    """`submit --wait`: each job as it ends. A printed output (a transcript) goes to `out`,
    under a `==> name <==` header when there are several; a written file, a failure and a
    cancel are one line each on `err`."""

    def __init__(self, out: IO[str], err: IO[str], *, several: bool):
        self.out = out
        self.err = err
        self.several = several

    def __call__(self, result: JobResult, path: str | None) -> None:
        job = result.job
        name = sanitize(_what(job)) or f"job {job.id}"
        if not result.ok:
            self.err.write(f"skeleton: {failure_line(job)}\n")
        elif path is not None:
            self.err.write(f"job {job.id} done on {job.node or '?'}: wrote {path}\n")
        else:
            if self.several:
                self.out.write(f"==> {name} <==\n")
            text = result.text
            if _is_tty(self.out):
                # A node's output on a terminal: escape sequences shown, never obeyed.
                text = sanitize(text)
            self.out.write(text if text.endswith("\n") or not text else text + "\n")
        self.out.flush()
        self.err.flush()


def _is_tty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def failure_line(job: Job) -> str:
    what = f"job {job.id} ({sanitize(_what(job))})" if _what(job) else f"job {job.id}"
    if job.state == "cancelled":
        return f"{what} was cancelled"
    where = f" on {job.node}" if job.node else ""
    exit_ = f": exit {job.exit_code}" if job.exit_code is not None else ""
    if job.error and job.error.startswith(f"exit {job.exit_code}"):
        exit_ = ""  # the error says it already ("exit 2: sox: can't open input")
    error = f": {sanitize(job.error)}" if job.error else ""
    return f"{what} failed{where}{exit_}{error} (skeleton jobs show {job.id})"


def left_lines(done: JobsDone) -> list[str]:
    """After a timeout or Ctrl-C: what became of each job that had not ended."""
    why = "interrupted" if done.interrupted else "timed out"
    lines = []
    for job in done.cancelled:
        state = "cancelled" if job.state == "cancelled" else "cancel requested"
        lines.append(f"skeleton: {why}: job {job.id}: {state}")
    for job in done.left:
        lines.append(f"skeleton: {why}: job {job.id} left {job.state}"
                     f" (skeleton jobs cancel {job.id} stops it)")
    if done.left and done.dispatcher_started:
        lines.append("skeleton: the dispatcher of this process stopped: the jobs run when a"
                     " dispatcher runs (skeleton jobs dispatch)")
    return lines


def cancel_line(job: Job) -> str:
    if job.state == "cancelled":
        return f"job {job.id}: cancelled"
    if job.final:
        return f"job {job.id} is {job.state} already: nothing to cancel"
    return (f"job {job.id}: cancel requested (running on {job.node or '?'}: its dispatcher"
            " kills it there)")


def event_line(event: JobEvent, *, now: datetime | None = None) -> str:
    """`jobs watch`: `14:02:11 job 12 stt running (attempt 1)`."""
    at = (now or datetime.now()).strftime("%H:%M:%S")
    extra = f" (attempt {event.attempt})" if event.attempt and event.state == "running" else ""
    cancel = ", cancel requested" if event.cancel and event.state == "running" else ""
    return sanitize(f"{at} job {event.id} {event.engine} {event.state}{extra}{cancel}")


def dispatch_summary(outcome: DispatchOutcome) -> str:
    return (f"dispatcher {outcome.dispatcher}: claimed {outcome.claimed}, done {outcome.done},"
            f" failed {outcome.failed}, lost {outcome.lost}, cancelled {outcome.cancelled}"
            f" in {outcome.seconds:.0f}s")
