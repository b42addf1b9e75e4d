"""`skeleton jobs ...`: voice jobs through the registry's durable queue (issue #14). Each
command parses its arguments, calls one `app.commands.jobs_*` function and renders what it
returns with `app.views.jobs`.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from skeleton_app.app.cli.options import Seconds, config_option, output_options, prepare


class JobId(click.ParamType[int, Any]):
    """A job id: a positive integer (`jobs list` shows them)."""

    name = "JOB"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        text = str(value).strip()
        if text.isascii() and text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"expected a job id (a number from `skeleton jobs list`), got {text[:40]!r}",
                  param, ctx)


JOB = JobId()
# registry.job_records.JOB_STATES, spelled out: importing the registry package loads psycopg
# (~30 ms), which `skeleton --help` must not pay (a unit test keeps the two equal).
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")


@click.group()
def jobs() -> None:
    """Voice jobs: speech to text, text to speech or your own command, routed to the best
    node through the registry's queue (exit codes: 0 ok, 1 a job failed with --wait,
    2 usage or no registry, 3 registry down, 130 interrupted)."""


@jobs.command("submit")
@click.argument("engine")
@click.argument("args", nargs=-1, metavar="[FILE... | TEXT | -- COMMAND]")
@click.option("--out", default=None, metavar="PATH",
              help="Write each output here as its job ends (implies --wait): a file, or a"
                   " directory (<input stem><suffix> per job; required for several inputs).")
@click.option("--wait", is_flag=True,
              help="Wait for the jobs: print a transcript, write a file output. Without a"
                   " running dispatcher, one runs in this process meanwhile.")
@click.option("--timeout", type=Seconds(), default=None,
              help="With --wait: stop waiting after this many seconds (the jobs go on).")
@click.option("--cancel-on-interrupt", is_flag=True,
              help="With --wait: Ctrl-C cancels the jobs (default: they go on).")
@click.option("--role", default=None, help="run: the role of the nodes that may run it.")
@click.option("--input", "input_file", default=None, metavar="FILE",
              help="run: the input file, {input} in the command.")
@click.option("--output", "output_name", default=None, metavar="NAME",
              help="run: the output file's name, {output} in the command.")
@output_options
@config_option
@click.pass_context
def submit_cmd(ctx: click.Context, engine: str, args: tuple[str, ...], out: str | None,
               wait: bool, timeout: float | None, cancel_on_interrupt: bool,
               role: str | None, input_file: str | None, output_name: str | None,
               as_json: bool, config: str | None) -> int:
    """Queue jobs for ENGINE: `stt FILE...` (one job per file), `tts TEXT`, any engine of
    config.yaml, or `run --role R [--input FILE] [--output NAME] -- 'cmd {input} >
    {output}'`. Nothing is queued if any input is bad."""
    from skeleton_app.app import commands
    from skeleton_app.app.jobs_submit import JobsRequest
    from skeleton_app.app.views import jobs as view

    session = prepare(ctx, config, None).session()
    request = JobsRequest.parse(session.settings, engine, args, role=role,
                                input_file=input_file, output_name=output_name, out=out,
                                wait=wait, timeout=timeout,
                                cancel_on_interrupt=cancel_on_interrupt)
    printer = None if as_json else view.ResultPrinter(sys.stdout, sys.stderr,
                                                      several=len(request.inputs) > 1)
    done = commands.jobs_submit(session, request, on_result=printer)
    if as_json:
        click.echo(view.submit_json(done, prints=request.prints))
    elif not done.waited:
        for line in view.queued_lines(done):
            click.echo(line)
    for line in view.left_lines(done):
        click.echo(line, err=True)
    return done.exit_code


@jobs.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(JOB_STATES),
              help="Only jobs in this state; repeatable.")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@output_options
@config_option
@click.pass_context
def list_cmd(ctx: click.Context, states: tuple[str, ...], limit: int, as_json: bool,
             config: str | None) -> int:
    """The newest jobs: state, node, attempts, times."""
    from skeleton_app.app import commands
    from skeleton_app.app.views import jobs as view

    found = commands.jobs_list(prepare(ctx, config, None).session(), states=states,
                               limit=limit)
    if as_json:
        click.echo(view.list_json(found))
    else:
        view.jobs_table(found, sys.stdout)
    return 0


@jobs.command("show")
@click.argument("job_id", metavar="JOB", type=JOB)
@output_options
@config_option
@click.pass_context
def show_cmd(ctx: click.Context, job_id: int, as_json: bool, config: str | None) -> int:
    """One job and every attempt: node, why that node, start/end, exit, stderr tail."""
    from skeleton_app.app import commands
    from skeleton_app.app.views import jobs as view

    detail = commands.jobs_show(prepare(ctx, config, None).session(), job_id)
    if as_json:
        click.echo(view.show_json(detail))
    else:
        view.show_text(detail, sys.stdout)
    return 0


@jobs.command("output")
@click.argument("job_id", metavar="JOB", type=JOB)
@click.option("--out", default=None, metavar="FILE",
              help="Write it to FILE (temporary name, then renamed) instead of stdout.")
@config_option
@click.pass_context
def output_cmd(ctx: click.Context, job_id: int, out: str | None, config: str | None) -> int:
    """A done job's output: the transcript, or the file its engine wrote (e.g. a WAV)."""
    from skeleton_app.app import commands
    from skeleton_app.app.jobs_submit import write_atomic

    result = commands.jobs_output(prepare(ctx, config, None).session(), job_id)
    data = result.output or b""
    if out is not None:
        write_atomic(out, data, job_id)
    elif sys.stdout.isatty():
        if b"\0" in data:
            raise click.UsageError(f"job {job_id}'s output is binary ({result.output_name}):"
                                   " give --out FILE or pipe it")
        from skeleton_app.app.views.common import sanitize

        click.echo(sanitize(data.decode("utf-8", "replace")), nl=False)
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return 0


@jobs.command("cancel")
@click.argument("job_id", metavar="JOB", type=JOB)
@output_options
@config_option
@click.pass_context
def cancel_cmd(ctx: click.Context, job_id: int, as_json: bool, config: str | None) -> int:
    """Cancel a job: a queued one at once, a running one is killed on its node."""
    from skeleton_app.app import commands
    from skeleton_app.app.views import jobs as view

    job = commands.jobs_cancel(prepare(ctx, config, None).session(), job_id)
    click.echo(view.job_json(job) if as_json else view.cancel_line(job))
    return 0


@jobs.command("retry")
@click.argument("job_id", metavar="JOB", type=JOB)
@output_options
@config_option
@click.pass_context
def retry_cmd(ctx: click.Context, job_id: int, as_json: bool, config: str | None) -> int:
    """Queue a failed or cancelled job again (its attempts start from zero)."""
    from skeleton_app.app import commands
    from skeleton_app.app.views import jobs as view

    job = commands.jobs_retry(prepare(ctx, config, None).session(), job_id)
    click.echo(view.job_json(job) if as_json else f"job {job.id} queued again")
    return 0


@jobs.command("watch")
@config_option
@click.pass_context
def watch_cmd(ctx: click.Context, config: str | None) -> int:
    """Print every job's state changes as they happen, one line each, until Ctrl-C."""
    from skeleton_app.app import commands
    from skeleton_app.app.views import jobs as view

    commands.jobs_watch(prepare(ctx, config, None).session(),
                        lambda event: click.echo(view.event_line(event)))
    return 0


@jobs.command("dispatch")
@config_option
@click.pass_context
def dispatch_cmd(ctx: click.Context, config: str | None) -> int:
    """Run jobs until Ctrl-C: claim, route to the best node, run, fail over. Several may run
    at once, on several machines."""
    from skeleton_app.app import commands
    from skeleton_app.app.views import common as render
    from skeleton_app.app.views import jobs as view

    outcome = commands.jobs_dispatch(prepare(ctx, config, None).session(),
                                     on_event=lambda line: click.echo(render.sanitize(line)))
    click.echo(view.dispatch_summary(outcome), err=True)
    return 0
