"""`skeleton cluster ...`: the operations on the cluster's nodes. Each command parses its
arguments, selects the nodes, calls one `app.commands` function (which runs the operation
and journals the run), renders the result with its view and returns the exit code.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from skeleton_app.app.cli import release_cmds
from skeleton_app.app.cli.options import Seconds, json_option, select, selection_options

if TYPE_CHECKING:
    from skeleton_app.app.commands import Session
    from skeleton_app.nodes import Node


@click.group()
@click.option("--no-persist", is_flag=True,
              help="Connect from this command only: no connection keeper (= ssh.persist 0).")
@click.pass_context
def cluster(ctx: click.Context, no_persist: bool) -> None:
    """Operations on the cluster's nodes (exit codes: 0 ok, 1 failed, 2 usage, 3 registry,
    4 unreachable, 130 interrupted)."""
    if ctx.obj is not None:
        ctx.obj.persist = not no_persist


class _ExecCommand(click.Command):
    """`exec` as pdsh users type it, `exec -n x uname -r`: click reads `-r` as one of ours.
    The error then says where the command's own options go."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            if "--" in args or exc.possibilities:  # a typo of ours: click's own suggestion
                raise
            raise click.NoSuchOption(
                exc.option_name, ctx=exc.ctx,
                message=f"{exc.message} The command's own options go after `--`: skeleton"
                        " cluster exec [OPTIONS] -- uname -r") from None


@cluster.command("exec", cls=_ExecCommand)
@click.argument("words", nargs=-1, required=False, metavar="[--] COMMAND...")
@selection_options
@click.option("--timeout", type=Seconds(), default=None,
              help="Kill the command on the node after this many seconds (default"
                   " ssh.command_timeout; unset: no timeout, a dead node is still detected).")
@click.option("--stream", is_flag=True, help="Print lines live as 'node: line'.")
@json_option
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Write every node's full stdout/stderr to DIR/<node>.out and .err.")
@click.option("--stdin", "use_stdin", is_flag=True,
              help="Send this command's stdin (read whole, at most 64 MiB) to every node.")
@click.option("--sudo", is_flag=True,
              help="Run the command under sudo (password asked once, only if a node needs it;"
                   " or from the file $SKELETON_SUDO_PASSWORD_FILE).")
@click.option("--sudo-user", default=None, metavar="USER",
              help="With --sudo: run as USER (default root).")
@click.pass_context
def exec_cmd(ctx: click.Context, words: tuple[str, ...], config: str | None,
             node_specs: tuple[str, ...], roles: tuple[str, ...], exclude: tuple[str, ...],
             fanout: int | None, timeout: float | None, stream: bool, as_json: bool,
             out_dir: str | None, use_stdin: bool, sudo: bool, sudo_user: str | None) -> int:
    """Run COMMAND on every selected node, in parallel.

    \b
    skeleton cluster exec -n node-01 "uname -r"      one word, as typed
    skeleton cluster exec -n node-01 -- uname -r     words joined with spaces (as ssh, pdsh)
    skeleton cluster exec -- 'ls /tmp' '|' wc -l     the node's shell runs: ls /tmp | wc -l
    tar c dir | skeleton cluster exec --stdin -- tar x -C /tmp

    Everything after `--` is the command, options included (POSIX): put skeleton's own
    options before it. Without --timeout or ssh.command_timeout the command runs as long as
    it needs (a node that stops answering is still reported lost, exit 4)."""
    from skeleton_app.app import commands
    from skeleton_app.app.exec_input import join_words, read_stdin, sudo_password_source
    from skeleton_app.app.views import common as render
    from skeleton_app.app.views.exec import exec_view
    from skeleton_app.ops.sudo import SudoRequest

    # `exec -n @failed --list-hosts` needs no command (pdsh -q, ansible --list-hosts);
    # otherwise a missing one is one line, exit 2.
    listing = not words and ctx.find_root().obj.list_hosts
    command = "" if listing else join_words(words)
    if sudo_user is not None and not sudo:
        raise click.UsageError("--sudo-user needs --sudo")
    request = SudoRequest(sudo_password_source(), sudo_user) if sudo else None
    session, nodes = select(ctx, config, fanout, node_specs, roles, exclude)
    data = read_stdin() if use_stdin else None
    on_line = None
    if stream and not as_json:
        def on_line(node: str, s: str, line: str) -> None:
            render.stream_line(sys.stdout, node, s, line)
    done = commands.exec_command(session, nodes, command, timeout=timeout, out_dir=out_dir,
                                 on_line=on_line, stdin=data, sudo=request)
    result = done.result
    if as_json:
        click.echo(result.to_json())
    elif stream:
        render.error_lines(result, sys.stdout)
    else:
        exec_view(result, sys.stdout)
    return done.exit_code


@cluster.command("status")
@selection_options
@json_option
@click.pass_context
def status_cmd(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
               roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
               as_json: bool) -> int:
    """Daemon, load, memory, GPU and disk of every selected node (one round trip each)."""
    from skeleton_app.app import commands
    from skeleton_app.app.views import common as render
    from skeleton_app.app.views import status as status_view

    session, nodes = select(ctx, config, fanout, node_specs, roles, exclude)
    if not as_json:
        render.preload_tables()
    done = commands.status(session, nodes)
    result, registry_rows = done.result, done.registry_rows
    if as_json:
        click.echo(status_view.status_json(result, registry_rows))
    else:
        status_view.status_text(result, nodes, registry_rows,
                                session.settings.registry.stale_after)
    return done.exit_code


@cluster.command("deploy")
@selection_options
@click.option("--source", default=None, metavar="PATH",
              help="Local tree to push (default deploy.source).")
@click.option("--dest", default=None, metavar="PATH",
              help="Destination on every node (default: the node's app dir).")
@click.option("--delete/--no-delete", "delete", default=None,
              help="Remove files the source no longer has (default deploy.delete); excluded"
                   " paths (.venv/, logs/, ...) are never removed.")
@click.option("--dry-run", is_flag=True, help="List per node what would change; change nothing.")
@click.option("--diff", is_flag=True,
              help="Show per node the diff of each file that would change (implies --dry-run).")
@click.option("--checksum", is_flag=True, help="Compare file contents, not size and time.")
@click.option("--force", is_flag=True,
              help="Run rsync even when the node's digest says it is up to date.")
@click.option("--restart", is_flag=True, help="Per node: stop the daemon, deploy, start it.")
@click.option("--lock-wait", type=Seconds(zero=True), default=10.0, show_default=True,
              metavar="SECONDS", help="How long to wait for another deploy's lock on a node.")
@click.option("--allow-secrets", is_flag=True,
              help="Send the tree even if it holds private keys (refused by default).")
@json_option
@click.pass_context
def deploy_cmd(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
               roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
               source: str | None, dest: str | None, delete: bool | None, dry_run: bool,
               diff: bool, checksum: bool, force: bool, restart: bool, lock_wait: float,
               allow_secrets: bool, as_json: bool) -> int:
    """Push the code tree to every selected node with rsync, in parallel."""
    import time

    from skeleton_app.app import commands
    from skeleton_app.app.views import common as render
    from skeleton_app.app.views.deploy import DeployProgress, deploy_text

    session, nodes = select(ctx, config, fanout, node_specs, roles, exclude)
    started = time.monotonic()
    if not as_json:
        render.preload_tables()
    done = commands.deploy(session, nodes, source=source, dest=dest, delete=delete,
                           dry_run=dry_run, checksum=checksum, force=force, restart=restart,
                           lock_wait=lock_wait, allow_secrets=allow_secrets,
                           progress=None if as_json else DeployProgress(nodes), diff=diff)
    result = done.result
    if as_json:
        click.echo(result.to_json())
    else:
        deploy_text(result, sys.stdout, list_changes=dry_run or diff, started=started)
    return done.exit_code


@cluster.command("bootstrap")
@selection_options
@click.option("--source", default=None, metavar="PATH",
              help="The project to install (default deploy.source; without a pyproject.toml:"
                   " the installed skeleton-app).")
@click.option("--wheelhouse", default=None, metavar="DIR",
              help="Build from these pre-built wheels only, no index (default"
                   " bootstrap.wheelhouse).")
@click.option("--force", is_flag=True, help="Install even where the node is up to date.")
@json_option
@click.pass_context
def bootstrap_cmd(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
                  roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
                  source: str | None, wheelhouse: str | None, force: bool,
                  as_json: bool) -> int:
    """Make each node's app dir .venv (project and dependencies, from wheels built here)."""
    from skeleton_app.app import commands
    from skeleton_app.app.views import common as render
    from skeleton_app.app.views.bootstrap import bootstrap_text, failures

    session, nodes = select(ctx, config, fanout, node_specs, roles, exclude)
    done = commands.bootstrap(session, nodes, source=source, wheelhouse=wheelhouse,
                              force=force)
    result = done.result
    if as_json:
        click.echo(result.to_json())
    else:
        bootstrap_text(result)
        for line in failures(result):
            click.echo(f"skeleton: {render.sanitize(line)}", err=True)
    return done.exit_code


@cluster.group("daemon")
def daemon_group() -> None:
    """Start, stop, restart or check the node daemon (daemon.manager: process or systemd)."""


def _daemon(ctx: click.Context, action: str, config: str | None, node_specs: tuple[str, ...],
            roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
            as_json: bool, batch: int | None = None, wait_healthy: bool = False,
            health_timeout: float = 30.0) -> int:
    from skeleton_app.app import commands
    from skeleton_app.app.views.daemon import daemon_text

    session, nodes = select(ctx, config, fanout, node_specs, roles, exclude)
    done = commands.daemon(session, nodes, action, batch=batch, wait_healthy=wait_healthy,
                           health_timeout=health_timeout)
    result = done.result
    if as_json:
        click.echo(result.to_json())
    else:
        daemon_text(result, nodes, sys.stdout)
    return done.exit_code


_HEALTH_TIMEOUT = click.option("--health-timeout", type=Seconds(),
                               default=30.0, show_default=True, metavar="SECONDS",
                               help="How long each node may take to answer /health.")


@daemon_group.command("start")
@selection_options
@click.option("--wait-healthy", is_flag=True, help="Also wait for each node's /health.")
@_HEALTH_TIMEOUT
@json_option
@click.pass_context
def daemon_start(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
                 roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
                 wait_healthy: bool, health_timeout: float, as_json: bool) -> int:
    """Start the daemon where it is not running (running ones are left alone)."""
    return _daemon(ctx, "start", config, node_specs, roles, exclude, fanout, as_json,
                   wait_healthy=wait_healthy, health_timeout=health_timeout)


@daemon_group.command("stop")
@selection_options
@json_option
@click.pass_context
def daemon_stop(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
                roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
                as_json: bool) -> int:
    """Stop the daemon: SIGTERM, then SIGKILL after daemon.stop_grace seconds."""
    return _daemon(ctx, "stop", config, node_specs, roles, exclude, fanout, as_json)


@daemon_group.command("restart")
@selection_options
@click.option("--batch", type=click.IntRange(min=1), default=None, metavar="K",
              help="Restart K nodes at a time; stop at the first that fails.")
@click.option("--wait-healthy", is_flag=True,
              help="Wait for each node's /health to answer from the new daemon before going on.")
@_HEALTH_TIMEOUT
@json_option
@click.pass_context
def daemon_restart(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
                   roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
                   batch: int | None, wait_healthy: bool, health_timeout: float,
                   as_json: bool) -> int:
    """Stop then start the daemon (rolling with --batch)."""
    return _daemon(ctx, "restart", config, node_specs, roles, exclude, fanout, as_json,
                   batch=batch, wait_healthy=wait_healthy, health_timeout=health_timeout)


@daemon_group.command("status")
@selection_options
@json_option
@click.pass_context
def daemon_status(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
                  roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
                  as_json: bool) -> int:
    """Is the daemon running? (exit 1 when it is not running on some node)"""
    return _daemon(ctx, "status", config, node_specs, roles, exclude, fanout, as_json)


@cluster.command("sync-models")
@selection_options
@click.option("--source-node", required=True, metavar="NODE",
              help="The node that holds the model (id or address).")
@click.option("--target-node", "target_specs", multiple=True, metavar="SPEC",
              help="Targets: ids, ranges, globs; repeatable (like --node; default: every other"
                   " selected node).")
@click.option("--models-path", default=None, metavar="PATH",
              help="Models directory on every node (default app.models_dir). Relative: under"
                   " each node's app dir; a directory elsewhere only as an absolute path.")
@click.option("--model", default=None, metavar="NAME",
              help="One model, an entry of the models directory (default: all of them).")
@click.option("--verify", is_flag=True,
              help="Re-hash every file on the targets: finds and repairs corrupted copies.")
@click.option("--relay", is_flag=True,
              help="Stream through this machine, for nodes that cannot reach each other"
                   " (nothing is stored here).")
@click.option("--streams-per-sender", type=click.IntRange(min=1), default=4,
              show_default=True, help="At most this many streams from one sending node.")
@json_option
@click.pass_context
def sync_models_cmd(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
                    roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
                    source_node: str, target_specs: tuple[str, ...], models_path: str | None,
                    model: str | None, verify: bool, relay: bool, streams_per_sender: int,
                    as_json: bool) -> int:
    """Copy a model from the node that has it to the others, node to node (a pipelined chain:
    about one link's time whatever the number of targets)."""
    from skeleton_app.app import commands
    from skeleton_app.app.views import common as render
    from skeleton_app.app.views.sync_models import SyncModelsProgress, summary_rows

    def targets(session: Session, nodes: tuple[Node, ...]) -> list[Node]:
        source = session.cluster().node(source_node)  # what --list-hosts shows: the written
        return [n for n in nodes if n.id != source.id]

    session, nodes = select(ctx, config, fanout, (*node_specs, *target_specs), roles, exclude,
                            listed=targets)
    done = commands.sync_models(session, nodes, source_node, models_path=models_path,
                                model=model, verify=verify, relay=relay,
                                streams_per_sender=streams_per_sender,
                                progress=SyncModelsProgress(enabled=not as_json))
    result, source = done.result, done.source
    if as_json:
        click.echo(result.to_json())
    else:
        render.table(f"sync-models from {source.id}",
                     ["node", "status", "moved", "time", "rate", "how / why"],
                     summary_rows(result))
        for warning in result.warnings:
            click.echo(f"skeleton: warning: {render.sanitize(warning)}", err=True)
    return done.exit_code


@cluster.command("logs")
@selection_options
@click.option("--lines", "lines_text", default=None, metavar="N",
              help="The last N lines of each source (default logs.lines).")
@click.option("--since", default=None, metavar="WHEN",
              help="Only lines since WHEN: 30s, 15m, 2h, 1d, 1h30m or an ISO date/time.")
@click.option("--grep", "pattern", default=None, metavar="PATTERN",
              help="Only lines matching PATTERN (grep -E), filtered on the node.")
@click.option("--follow", "-f", is_flag=True,
              help="Stream new lines from every node as 'node: line' until Ctrl-C.")
@click.option("--out", "out_dir", default="collected_logs", show_default=True, metavar="DIR",
              help="Write DIR/<node>.log and DIR/merged.log.")
@click.option("--max-bytes", "max_bytes_text", default="16M", show_default=True,
              metavar="SIZE", help="At most SIZE of log per node (its newest bytes).")
@click.option("--max-line", "max_line_text", default="64K", show_default=True,
              metavar="SIZE", help="Lines longer than SIZE are cut to their first SIZE bytes.")
@json_option
@click.pass_context
def logs_cmd(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
             roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
             lines_text: str | None, since: str | None, pattern: str | None, follow: bool,
             out_dir: str, max_bytes_text: str, max_line_text: str, as_json: bool) -> int:
    """Gather the daemon log, the logs.files globs and (systemd) the journal of every node."""
    from skeleton_app.app import commands
    from skeleton_app.app.views import common as render
    from skeleton_app.app.views.logs import logs_text

    # Bad values fail here, before any node is contacted.
    query = commands.LogsQuery.parse(lines=lines_text, since=since, grep=pattern,
                                     max_bytes=max_bytes_text, max_line=max_line_text)
    session, nodes = select(ctx, config, fanout, node_specs, roles, exclude)
    printer = render.NodeLines()
    done = commands.logs(session, nodes, query, out_dir=out_dir, follow=follow,
                         on_line=printer.line, on_error=printer.error)
    result = done.result
    if as_json:
        click.echo(result.to_json())
    elif not follow:
        logs_text(result, sys.stdout, out_dir=out_dir)
    return done.exit_code


cluster.add_command(release_cmds.rollback_cmd)  # deploy.strategy: releases
cluster.add_command(release_cmds.releases_cmd)
