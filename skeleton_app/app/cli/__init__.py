"""`skeleton`: the command line. The only package that imports Click.

Every command parses its arguments, calls one application command (`skeleton_app.app.
commands`), renders the result and returns an exit code. Errors are mapped to messages and
exit codes here, in `main()`. The commands live by subject: `cluster_cmds` (the operations
on the nodes), `jobs_cmds` (voice jobs), `registry_cmds` (db, nodes, runs), `dev_cmds` (the
node daemon, the testbed); `options` holds what they share.

Exit codes of every `skeleton cluster` command (`errors.ExitCode`):

    0  every selected node succeeded
    1  some node ran the command and failed (non-zero exit), or answered but could not do
       it (deploy lock held, rsync missing, disk full)
    2  usage or configuration error; nothing ran
    3  registry/database error; nothing ran
    4  some node was unreachable, refused the connection or its key, or timed out
       (wins over 1)
  130  interrupted by Ctrl-C: the work on the nodes was stopped (wins over all)

Ctrl-C during a `cluster` command stops the work on the nodes (`skeleton_app.cancel`) and
the command reports what was done where; a second Ctrl-C exits at once.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import click

from skeleton_app.app.cli import (
    cluster_cmds,
    copy_cmds,
    dev_cmds,
    jack_cmds,
    jobs_cmds,
    registry_cmds,
    top_cmds,
    web_cmds,
)
from skeleton_app.app.cli import jack_link_cmds as _jack_link_cmds  # noqa: F401  (jack link)
from skeleton_app.app.cli import jack_server_cmds as _jack_server  # noqa: F401  (jack status...)
from skeleton_app.app.cli import retry_cmds as _retry_cmds  # noqa: F401  (runs retry)
from skeleton_app.app.cli.completion import completion
from skeleton_app.app.cli.keeper_cmds import keeper
from skeleton_app.app.cli.options import Ctx
from skeleton_app.app.interrupt import install_sigint as _install_sigint
from skeleton_app.errors import ExitCode, SkeletonError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", default=None, metavar="PATH",
              help="Config file (default $SKELETON_CONFIG, else ./config.yaml).")
@click.version_option(package_name="skeleton-app")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """Run a small cluster of voice/ML nodes over plain SSH."""
    ctx.obj = Ctx(config)
    ctx.call_on_close(ctx.obj.close)
    if _handle_sigint and ctx.invoked_subcommand in ("cluster", "jack"):
        _install_sigint()


for _group in (cluster_cmds.cluster, jobs_cmds.jobs, registry_cmds.db, registry_cmds.nodes,
               registry_cmds.runs, dev_cmds.node_daemon, dev_cmds.testbed, jack_cmds.jack,
               completion, web_cmds.web):
    cli.add_command(_group)
cli.add_command(keeper)  # warm mode's connection keeper (skeleton_app/keeper)
for _command in copy_cmds.COMMANDS:  # cluster copy, cluster fetch
    cluster_cmds.cluster.add_command(_command)
cluster_cmds.cluster.add_command(top_cmds.top_cmd)  # cluster top


# Set by `main()` when it runs as the `skeleton` command (not inside someone's process).
_handle_sigint = False


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: maps every error to one line on stderr and an exit code.

    Called without `argv` (the `skeleton` command itself) it ends the process with
    `_exit_now`; with `argv` (from Python) it raises SystemExit as usual."""
    global _handle_sigint
    from skeleton_app import cancel

    exit_: Callable[[int], NoReturn] = _exit_now
    if argv is not None:
        exit_ = sys.exit
    else:
        _handle_sigint = True
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="skeleton",
                      standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("skeleton: aborted", err=True)
        exit_(ExitCode.INTERRUPTED)
    except click.UsageError as exc:
        # One line, as every other error (Click's own is Usage:, Try ..., a blank, Error:).
        where = exc.ctx.command_path if exc.ctx is not None else "skeleton"
        message = " ".join(exc.format_message().split())
        click.echo(f"skeleton: error: {message} (see '{where} --help')", err=True)
        exit_(ExitCode.USAGE)
    except click.ClickException as exc:
        exc.show()
        exit_(exc.exit_code)
    except click.exceptions.Exit as exc:
        exit_(exc.exit_code)
    except SkeletonError as exc:
        click.echo(f"skeleton: error: {exc}", err=True)
        exit_(ExitCode.INTERRUPTED if cancel.cancelled() else exc.exit_code)
    except KeyboardInterrupt:
        click.echo("skeleton: interrupted", err=True)
        exit_(ExitCode.INTERRUPTED)
    except OSError as exc:
        # The output cannot be written (`> /dev/full`, a disk full, a closed terminal); Click
        # turns a closed pipe into exit 1 itself. What ran on the nodes is done and journaled.
        what = (f"{exc.strerror or exc}: {exc.filename}" if exc.filename
                else f"cannot write the output: {exc.strerror or exc}")
        with contextlib.suppress(OSError):
            sys.stderr.write(f"skeleton: error: {what}\n")
        exit_(ExitCode.FAILED)
    if cancel.cancelled():
        exit_(ExitCode.INTERRUPTED)  # what ran was stopped, and the output said where
    exit_(rv if isinstance(rv, int) else 0)


def _exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown, which frees every object of the
    ~500 modules a command has loaded one by one: measured 25-40 ms of each command, as
    long as a warm command on all nodes. Everything is done by then: connections closed
    (`Ctx.close`), files written in `with` blocks; the standard streams are flushed here.
    A thread that is not a daemon still running (none of ours) gets the normal exit."""
    import os
    import threading

    for stream in (sys.stdout, sys.stderr):
        # A closed pipe (`| head`): nothing left to say; on stdout it ends with 1, as
        # Click's EPIPE handling does when the pipe closes earlier (so `| head` is not racy).
        try:
            stream.flush()
        except BrokenPipeError:
            code = 1 if stream is sys.stdout else code
        except (OSError, ValueError):
            pass
    from skeleton_app.app.stdout_pipe import reader_gone

    if code == 0 and reader_gone():
        code = 1  # the same, where CPython lost the EPIPE of a partly taken large write
    spawn = sys.modules.get("skeleton_app.keeper.spawn")
    if spawn is not None:
        spawn.start_pending()  # a keeper asked for by this command: after its output
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()
           if t is not threading.main_thread()):
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
