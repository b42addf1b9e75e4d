"""The `skeleton` entry point, with warm mode's fast path for `skeleton cluster exec`.

With a keeper running (skeleton_app/keeper), most of a warm command's time is Python
starting and importing: Click and its help machinery, Rich, Paramiko. This module reads the
common form of `cluster exec` by hand,

    skeleton [-c PATH] cluster exec [-n SPEC] [--role R] [--exclude SPEC] [-c PATH]
             [--fanout N] [--timeout S] [--format F] [--json] [--] COMMAND...

resolves the config and the selection, and runs the same application function the Click
command runs (`app.commands.exec_command`: the same operation, journal and `@failed` state)
through the keeper, then prints with the same view and exits with the same code. Anything
else (another command, another option, `--help`, a registry configured, `@failed`, no keeper
answering, a config error) goes to the Click CLI unchanged, which reports errors its way and
starts a keeper when none answers. Nothing here imports Click, Rich or Paramiko.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from skeleton_app.app.commands import Session
    from skeleton_app.keeper.paths import KeeperPaths
    from skeleton_app.nodes import Node

_VALUE_OPTIONS = {"-n": "nodes", "--node": "nodes", "--role": "roles", "--exclude": "exclude",
                  "-c": "config", "--config": "config", "--fanout": "fanout",
                  "--timeout": "timeout", "--format": "format"}
_FORMATS = ("table", "plain", "tsv", "json")


@dataclass(slots=True)
class ExecArgs:
    """A `cluster exec` command line as the Click command would read it."""

    words: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    config: str | None = None
    fanout: int | None = None
    timeout: float | None = None
    format: str | None = None
    as_json: bool = False


def parse(argv: Sequence[str]) -> ExecArgs | None:
    """`argv` (without the program name) as an exec command, None when it is anything else
    (or anything this reader is not sure about: Click then reads it)."""
    args = list(argv)
    root_config = None
    if len(args) >= 2 and args[0] in ("-c", "--config"):
        root_config, args = args[1], args[2:]
    if args[:2] != ["cluster", "exec"]:
        return None
    out = ExecArgs(config=root_config)
    rest = args[2:]
    i = 0
    while i < len(rest):
        token = rest[i]
        i += 1
        if token == "--":
            out.words.extend(rest[i:])
            break
        if not token.startswith("-") or token == "-":
            out.words.append(token)
            continue
        if token == "--json":
            out.as_json = True
            continue
        name, eq, value = token.partition("=")
        if name not in _VALUE_OPTIONS or (eq and not name.startswith("--")):
            return None
        if not eq:
            if i >= len(rest):
                return None
            value = rest[i]
            i += 1
        if not _store(out, _VALUE_OPTIONS[name], value):
            return None
    if not " ".join(out.words).strip():
        return None
    return out


def _store(out: ExecArgs, key: str, value: str) -> bool:
    """Store one option's value; False when Click would refuse it (it then says why)."""
    if key in ("nodes", "roles", "exclude"):
        getattr(out, key).append(value)
    elif key == "config":
        out.config = value  # the command's --config wins over the root's, as in Click
    elif key == "fanout":
        if not value.strip().isdigit() or int(value) < 1:
            return False
        out.fanout = int(value)
    elif key == "timeout":
        from skeleton_app.config import MAX_SECONDS

        try:
            number = float(value)
        except ValueError:
            return False
        if not (math.isfinite(number) and 0 < number <= MAX_SECONDS):
            return False
        out.timeout = number
    elif key == "format":
        if value not in _FORMATS:
            return False
        out.format = value
    return True


def prepare(args: ExecArgs) -> tuple[Session, tuple[Node, ...]] | None:
    """The session (over a live keeper) and the selected nodes for `args`; None when this
    path does not apply (nothing has run then)."""
    from skeleton_app.app.commands import Selection, Session
    from skeleton_app.cluster import Cluster
    from skeleton_app.config import check_identity_files, load_config
    from skeleton_app.errors import SkeletonError
    from skeleton_app.keeper.client import KeeperRunner, ping
    from skeleton_app.keeper.paths import KeeperPathError, keeper_paths
    from skeleton_app.nodes import names_failed

    try:
        overrides = {"ssh.fanout": args.fanout} if args.fanout else None
        settings = load_config(args.config, overrides=overrides)
        persist = settings.ssh.persist
        if settings.registry.dsn or persist <= 0:
            return None
        if names_failed([*args.nodes, *args.exclude]):
            return None
        paths = keeper_paths(make=False)
        if ping(paths) is None:
            return None
        runner = KeeperRunner(settings.ssh, paths, start=lambda: _replace(paths, persist))
        check_identity_files(settings, settings.nodes, source="SKELETON_SSH_IDENTITY_FILE"
                             if "SKELETON_SSH_IDENTITY_FILE" in os.environ else None)
        cluster = Cluster(settings, settings.nodes, connector=runner)
        session = Session(args.config, fanout=args.fanout, settings=settings, cluster=cluster)
        nodes = session.select(Selection(args.nodes, args.roles, args.exclude))
    except (SkeletonError, KeeperPathError, OSError):
        return None  # the Click path reports it in its words
    return session, nodes


def _replace(paths: KeeperPaths, persist: float) -> None:
    """Start a keeper in place of one lost mid-command (`KeeperRunner.close` calls it)."""
    from skeleton_app.keeper import spawn

    spawn.start(paths, persist)


def run(session: Session, nodes: tuple[Node, ...], args: ExecArgs) -> int:
    """Run the command as the Click `cluster exec` does, print its view; the exit code."""
    from skeleton_app import cancel
    from skeleton_app.app import commands
    from skeleton_app.app.interrupt import install_sigint
    from skeleton_app.app.stdout_pipe import reader_gone
    from skeleton_app.app.views import common as render
    from skeleton_app.app.views.exec import exec_text
    from skeleton_app.errors import ExitCode, SkeletonError

    install_sigint()
    render.set_format(args.format)
    try:
        with session:
            done = commands.exec_command(session, nodes, " ".join(args.words),
                                         timeout=args.timeout)
    except SkeletonError as exc:
        print(f"skeleton: error: {exc}", file=sys.stderr)
        return ExitCode.INTERRUPTED if cancel.cancelled() else exc.exit_code
    except KeyboardInterrupt:
        print("skeleton: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    try:
        if args.as_json or args.format == "json":
            print(done.result.to_json())
        else:
            exec_text(done.result, sys.stdout)
        sys.stdout.flush()  # here, so that a closed pipe is seen here, whatever the buffer
        if reader_gone():
            raise BrokenPipeError  # CPython lost its EPIPE (app/stdout_pipe.py)
    except BrokenPipeError:
        # The reader went away (`| head -1`): as Click's EPIPE handling on the other path,
        # no traceback and exit 1; nothing more can reach that pipe.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (the final flush must not fail)
        return 1
    return ExitCode.INTERRUPTED if cancel.cancelled() else done.exit_code


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (`skeleton`, `python -m skeleton_app`): the fast path when it
    applies, else the Click CLI (`app.cli.main`), which it calls with the same `argv`."""
    if argv is None:
        args = parse(sys.argv[1:])
        ready = prepare(args) if args is not None else None
        if args is not None and ready is not None:
            _exit(run(*ready, args))
    from skeleton_app.app.cli import main as cli_main

    cli_main(argv)


def _exit(code: int) -> NoReturn:
    """As the Click path's `_exit_now`: flush, then end without the interpreter's teardown."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`)
            stream.flush()
    os._exit(code)
