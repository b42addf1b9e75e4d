"""`skeleton`: the command line. The only module that imports Click.

Every command parses its arguments, calls one library function, renders the result and
returns an exit code. Errors are mapped to messages and exit codes here, in `main()`.

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

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click

from skeleton_app.errors import NodeError, NodeErrorKind, SkeletonError, UsageError
from skeleton_app.results import EXIT_USAGE, ClusterResult

SELECTION_HELP = ("Nodes: ids, ranges (linux-[01-03]), globs (linux-*), addresses, @GROUP or"
                  " @ROLE; repeatable, comma-separated.")


class Seconds(click.ParamType[float, Any]):
    """A finite number of seconds, at most a year (click's FloatRange lets `nan` through
    every bound, and `inf` overflowed the node's timeouts: exit 4 instead of 2)."""

    name = "seconds"

    def __init__(self, *, zero: bool = False):
        self.zero = zero

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        import math

        from skeleton_app.config import MAX_SECONDS

        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and 0 <= number <= MAX_SECONDS) or (
                number == 0 and not self.zero):
            self.fail(f"expected a number of seconds{'' if self.zero else ' > 0'}, at most a"
                      f" year, got {value!r}", param, ctx)
        return number


class Ctx:
    """Lazily built shared state: the settings and the cluster (built once per process)."""

    def __init__(self, config: str | None):
        self.config = config
        self.overrides: dict[str, Any] = {}
        self._cluster: Any = None

    def settings(self) -> Any:
        from skeleton_app.config import load_config

        return load_config(self.config, overrides=self.overrides)

    def cluster(self) -> Any:
        if self._cluster is None:
            from skeleton_app.cluster import Cluster

            self._cluster = Cluster.from_config(self.config, overrides=self.overrides)
            for warning in self._cluster.warnings:
                click.echo(f"skeleton: warning: {warning}", err=True)
        return self._cluster

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()


def selection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--fanout", type=click.IntRange(min=1), default=None,
                      help="At most this many nodes in flight (default ssh.fanout).")(fn)
    fn = click.option("--exclude", "exclude", multiple=True, metavar="SPEC",
                      help="Leave these nodes out.")(fn)
    fn = click.option("--role", "roles", multiple=True, metavar="ROLE",
                      help="Only nodes with this role; repeatable.")(fn)
    fn = click.option("--node", "-n", "node_specs", multiple=True, metavar="SPEC",
                      help=SELECTION_HELP)(fn)
    fn = click.option("--config", "-c", "config", default=None, metavar="PATH",
                      help="Config file (default $SKELETON_CONFIG, else ./config.yaml).")(fn)
    return fn


def _prepare(ctx: click.Context, config: str | None, fanout: int | None) -> Ctx:
    state: Ctx = ctx.find_root().obj
    if config:
        state.config = config
    if fanout:
        state.overrides["ssh.fanout"] = fanout
    return state


def _select(state: Ctx, node_specs: Sequence[str], roles: Sequence[str],
            exclude: Sequence[str]) -> tuple[Any, tuple[Any, ...]]:
    cluster = state.cluster()
    # Every value as typed: an empty `--node ''` (an unset shell variable) is an error in
    # select, never dropped (dropping it would widen the run to every node).
    return cluster, cluster.select(list(node_specs), roles=list(roles), exclude=list(exclude))


def _record(state: Ctx, cluster: Any, operation: str, arguments: dict[str, Any],
            selection: Sequence[str], result: Any) -> None:
    """Write the run to the registry when one is configured; never fail the command."""
    if not cluster.settings.registry.dsn:
        return  # without importing the registry (psycopg: ~30 ms)
    from skeleton_app.registry import journal_run

    warning = journal_run(cluster.settings, operation, arguments, selection, result)
    if warning:
        click.echo(warning, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", default=None, metavar="PATH",
              help="Config file (default $SKELETON_CONFIG, else ./config.yaml).")
@click.version_option(package_name="skeleton-app")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """Run a small cluster of voice/ML nodes over plain SSH."""
    ctx.obj = Ctx(config)
    ctx.call_on_close(ctx.obj.close)


@cli.group()
def cluster() -> None:
    """Operations on the cluster's nodes (exit codes: 0 ok, 1 failed, 2 usage, 3 registry,
    4 unreachable, 130 interrupted)."""
    if _handle_sigint:
        _install_sigint()


# Set by `main()` when it runs as the `skeleton` command (not inside someone's process).
_handle_sigint = False


def _install_sigint() -> None:
    """First Ctrl-C: cancel (every node's command is stopped, the command reports and exits
    130). Second: exit at once. Written with os.write: the handler interrupts the main
    thread, which may be inside a write to the same stream."""
    import os
    import signal

    from skeleton_app import cancel

    def on_sigint(_signum: int, _frame: object) -> None:
        if cancel.cancelled():
            os.write(2, b"skeleton: interrupted again: exiting now\n")
            cancel.TOKEN.last_words()  # a SIGKILL to every command still running on a node
            os._exit(130)
        os.write(2, b"skeleton: interrupted: stopping the work on the nodes"
                    b" (Ctrl-C again to quit at once)\n")
        cancel.cancel()

    signal.signal(signal.SIGINT, on_sigint)


@cluster.command("exec")
@click.argument("command")
@selection_options
@click.option("--timeout", type=Seconds(), default=None,
              help="Kill the command on the node after this many seconds.")
@click.option("--stream", is_flag=True, help="Print lines live as 'node: line'.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Write every node's full stdout/stderr to DIR/<node>.out and .err.")
@click.pass_context
def exec_cmd(ctx: click.Context, command: str, config: str | None, node_specs: tuple[str, ...],
             roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
             timeout: float | None, stream: bool, as_json: bool, out_dir: str | None) -> int:
    """Run COMMAND on every selected node, in parallel."""
    from skeleton_app.app.views import common as render
    from skeleton_app.app.views.exec import exec_text
    from skeleton_app.ops.run import exec_command

    state = _prepare(ctx, config, fanout)
    cluster_, nodes = _select(state, node_specs, roles, exclude)
    on_line = None
    if stream and not as_json:
        def on_line(node: str, s: str, line: str) -> None:
            render.stream_line(sys.stdout, node, s, line)
    result = exec_command(cluster_, command, nodes, timeout=timeout, fanout=fanout,
                          out_dir=out_dir, on_line=on_line)
    if as_json:
        click.echo(result.to_json())
    elif stream:
        render.error_lines(result, sys.stdout)
    else:
        exec_text(result, sys.stdout)
    _record(state, cluster_, "exec", {"command": command, "timeout": timeout},
            [n.id for n in nodes], result)
    return int(result.exit_code())


@cluster.command("status")
@selection_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def status_cmd(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
               roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
               as_json: bool) -> int:
    """Daemon, load, memory, GPU and disk of every selected node (one round trip each)."""
    from skeleton_app.app.views import common as render
    from skeleton_app.app.views import status as status_view
    from skeleton_app.ops import status as status_op

    state = _prepare(ctx, config, fanout)
    cluster_, nodes = _select(state, node_specs, roles, exclude)
    if not as_json:
        render.preload_tables()
    result = status_op.status(cluster_, nodes, fanout=fanout)
    registry_rows = status_op.registry_snapshot(cluster_, result)
    if as_json:
        click.echo(status_view.status_json(result, registry_rows))
    else:
        status_view.status_text(result, nodes, registry_rows,
                                cluster_.settings.registry.stale_after)
    _record(state, cluster_, "status", {}, [n.id for n in nodes], result)
    return int(result.exit_code())


# @@deploy-commands@@

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
@click.option("--checksum", is_flag=True, help="Compare file contents, not size and time.")
@click.option("--force", is_flag=True,
              help="Run rsync even when the node's digest says it is up to date.")
@click.option("--restart", is_flag=True, help="Per node: stop the daemon, deploy, start it.")
@click.option("--lock-wait", type=Seconds(zero=True), default=10.0, show_default=True,
              metavar="SECONDS", help="How long to wait for another deploy's lock on a node.")
@click.option("--allow-secrets", is_flag=True,
              help="Send the tree even if it holds private keys (refused by default).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@click.pass_context
def deploy_cmd(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
               roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
               source: str | None, dest: str | None, delete: bool | None, dry_run: bool,
               checksum: bool, force: bool, restart: bool, lock_wait: float,
               allow_secrets: bool, as_json: bool) -> int:
    """Push the code tree to every selected node with rsync, in parallel."""
    import contextlib
    import time

    from skeleton_app.app.views import common as render
    from skeleton_app.app.views.deploy import DeployProgress, deploy_text
    from skeleton_app.ops.deploy import deploy

    state = _prepare(ctx, config, fanout)
    cluster_, nodes = _select(state, node_specs, roles, exclude)
    started = time.monotonic()
    if not as_json:
        render.preload_tables()
    progress = DeployProgress(nodes)
    live = progress.enabled and not as_json
    with progress if live else contextlib.nullcontext():
        result = deploy(cluster_, nodes, source=source, dest=dest, delete=delete,
                        dry_run=dry_run, checksum=checksum, force=force, restart=restart,
                        lock_wait=lock_wait, fanout=fanout, allow_secrets=allow_secrets,
                        on_progress=progress.update if live else None)
    if as_json:
        click.echo(result.to_json())
    else:
        deploy_text(result, sys.stdout, list_changes=dry_run, started=started)
    _record(state, cluster_, "deploy-dry-run" if dry_run else "deploy",
            {"source": source, "dest": dest, "delete": delete, "checksum": checksum,
             "force": force, "restart": restart}, [n.id for n in nodes], result)
    return int(result.exit_code())


@cluster.command("bootstrap")
@selection_options
@click.option("--source", default=None, metavar="PATH",
              help="The project to install (default deploy.source; without a pyproject.toml:"
                   " the installed skeleton-app).")
@click.option("--wheelhouse", default=None, metavar="DIR",
              help="Build from these pre-built wheels only, no index (default"
                   " bootstrap.wheelhouse).")
@click.option("--force", is_flag=True, help="Install even where the node is up to date.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@click.pass_context
def bootstrap_cmd(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
                  roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
                  source: str | None, wheelhouse: str | None, force: bool,
                  as_json: bool) -> int:
    """Make each node's app dir .venv (project and dependencies, from wheels built here)."""
    from skeleton_app.app.views import common as render
    from skeleton_app.app.views.bootstrap import bootstrap_text, failures
    from skeleton_app.ops.bootstrap import bootstrap

    state = _prepare(ctx, config, fanout)
    cluster_, nodes = _select(state, node_specs, roles, exclude)
    result = bootstrap(cluster_, nodes, source=source, wheelhouse=wheelhouse, force=force,
                       fanout=fanout)
    if as_json:
        click.echo(result.to_json())
    else:
        bootstrap_text(result)
        for line in failures(result):
            click.echo(f"skeleton: {render.sanitize(line)}", err=True)
    _record(state, cluster_, "bootstrap", {"source": source, "force": force},
            [n.id for n in nodes], result)
    return int(result.exit_code())


# @@daemon-commands@@

@cluster.group("daemon")
def daemon_group() -> None:
    """Start, stop, restart or check the node daemon (daemon.manager: process or systemd)."""


def _daemon(ctx: click.Context, action: str, config: str | None, node_specs: tuple[str, ...],
            roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
            as_json: bool, batch: int | None = None, wait_healthy: bool = False,
            health_timeout: float = 30.0) -> int:
    from skeleton_app.app.views.daemon import daemon_text
    from skeleton_app.ops.daemon import daemon_control

    state = _prepare(ctx, config, fanout)
    cluster_, nodes = _select(state, node_specs, roles, exclude)
    result = daemon_control(cluster_, nodes, action, batch=batch, wait_healthy=wait_healthy,
                            health_timeout=health_timeout, fanout=fanout)
    if as_json:
        click.echo(result.to_json())
    else:
        daemon_text(result, nodes, sys.stdout)
    _record(state, cluster_, f"daemon {action}",
            {"batch": batch, "wait_healthy": wait_healthy}, [n.id for n in nodes], result)
    return int(result.exit_code())


_JSON_OPTION = click.option("--json", "as_json", is_flag=True,
                            help="Print the whole result as JSON.")
_HEALTH_TIMEOUT = click.option("--health-timeout", type=Seconds(),
                               default=30.0, show_default=True, metavar="SECONDS",
                               help="How long each node may take to answer /health.")


@daemon_group.command("start")
@selection_options
@click.option("--wait-healthy", is_flag=True, help="Also wait for each node's /health.")
@_HEALTH_TIMEOUT
@_JSON_OPTION
@click.pass_context
def daemon_start(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
                 roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
                 wait_healthy: bool, health_timeout: float, as_json: bool) -> int:
    """Start the daemon where it is not running (running ones are left alone)."""
    return _daemon(ctx, "start", config, node_specs, roles, exclude, fanout, as_json,
                   wait_healthy=wait_healthy, health_timeout=health_timeout)


@daemon_group.command("stop")
@selection_options
@_JSON_OPTION
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
@_JSON_OPTION
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
@_JSON_OPTION
@click.pass_context
def daemon_status(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
                  roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
                  as_json: bool) -> int:
    """Is the daemon running? (exit 1 when it is not running on some node)"""
    return _daemon(ctx, "status", config, node_specs, roles, exclude, fanout, as_json)


# @@models-commands@@

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
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@click.pass_context
def sync_models_cmd(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
                    roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
                    source_node: str, target_specs: tuple[str, ...], models_path: str | None,
                    model: str | None, verify: bool, relay: bool, streams_per_sender: int,
                    as_json: bool) -> int:
    """Copy a model from the node that has it to the others, node to node (a pipelined chain:
    about one link's time whatever the number of targets)."""
    from skeleton_app.app.views import common as render
    from skeleton_app.app.views.sync_models import SyncModelsProgress, summary_rows
    from skeleton_app.ops import sync_models as models_op

    state = _prepare(ctx, config, fanout)
    cluster_, nodes = _select(state, (*node_specs, *target_specs), roles, exclude)
    source = cluster_.node(source_node)
    targets = [n for n in nodes if n.id != source.id]
    with SyncModelsProgress(enabled=not as_json) as display:
        result = models_op.sync_models(
            cluster_, source_node=source, targets=targets, models_path=models_path,
            model=model, verify=verify, relay=relay, on_progress=display.update,
            streams_per_sender=streams_per_sender)
    if as_json:
        click.echo(result.to_json())
    else:
        render.table(f"sync-models from {source.id}",
                     ["node", "status", "moved", "time", "rate", "how / why"],
                     summary_rows(result))
        for warning in result.warnings:
            click.echo(f"skeleton: warning: {render.sanitize(warning)}", err=True)
    _record(state, cluster_, "sync-models",
            {"source": source.id, "model": model, "models_path": models_path,
             "verify": verify, "relay": relay}, [n.id for n in targets], result)
    return int(result.exit_code())


# @@logs-commands@@

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
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@click.pass_context
def logs_cmd(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
             roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
             lines_text: str | None, since: str | None, pattern: str | None, follow: bool,
             out_dir: str, max_bytes_text: str, max_line_text: str, as_json: bool) -> int:
    """Gather the daemon log, the logs.files globs and (systemd) the journal of every node."""
    from skeleton_app.app.views import common as render
    from skeleton_app.app.views.logs import logs_text
    from skeleton_app.ops import logs as logs_op

    # Bad values fail here, before any node is contacted.
    lines = logs_op.parse_lines(lines_text) if lines_text is not None else None
    since_at = logs_op.parse_since(since) if since is not None else None
    max_bytes = logs_op.parse_size(max_bytes_text)
    max_line = logs_op.parse_size(max_line_text, what="--max-line")
    state = _prepare(ctx, config, fanout)
    cluster_, nodes = _select(state, node_specs, roles, exclude)
    arguments = {"lines": lines, "since": since, "grep": pattern, "follow": follow}
    if follow:
        from skeleton_app import cancel

        printer = render.NodeLines()
        result: ClusterResult[Any] = logs_op.follow_logs(
            cluster_, nodes, on_line=printer.line, lines=lines, since=since_at, grep=pattern,
            on_error=printer.error)
        cancel.reset()  # Ctrl-C is how --follow ends: not an interruption (exit 0)
        if as_json:
            click.echo(result.to_json())
    else:
        result = logs_op.collect_logs(cluster_, nodes, lines=lines, since=since,
                                      grep=pattern, out_dir=out_dir, max_bytes=max_bytes,
                                      max_line=max_line)
        if as_json:
            click.echo(result.to_json())
        else:
            logs_text(result, sys.stdout, out_dir=out_dir)
    _record(state, cluster_, "logs", arguments, [n.id for n in nodes], result)
    return int(result.exit_code())


@cli.group()
def db() -> None:
    """The PostgreSQL node registry."""


@db.command("init")
@click.option("--config", "-c", "config", default=None, metavar="PATH", help="Config file.")
@click.pass_context
def db_init(ctx: click.Context, config: str | None) -> int:
    """Create or upgrade the schema (idempotent; safe to run concurrently)."""
    from skeleton_app.registry import init_schema

    settings = _prepare(ctx, config, None).settings()
    if not settings.registry.dsn:
        raise UsageError("no database configured: set registry.dsn or SKELETON_DATABASE_URL")
    st = init_schema(settings.registry.dsn, connect_timeout=settings.registry.connect_timeout)
    if st.applied:
        click.echo(f"schema upgraded from version {st.before or 0} to {st.after}")
    else:
        click.echo(f"schema is up to date (version {st.after})")
    return 0


def _registry(ctx: click.Context, config: str | None) -> Any:
    from skeleton_app.registry import open_registry

    return open_registry(_prepare(ctx, config, None).settings())


_config_option = click.option("--config", "-c", "config", default=None, metavar="PATH",
                              help="Config file.")


@cli.group()
def nodes() -> None:
    """The node table: list, add, approve, credentials, remove, enable, disable, import,
    export."""


@nodes.command("list")
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def nodes_list(ctx: click.Context, config: str | None, as_json: bool) -> int:
    """Every registered node, enabled or not, with its heartbeat."""
    from skeleton_app.app.views import common as render

    settings = _prepare(ctx, config, None).settings()
    with _registry(ctx, config) as registry:
        entries, warnings = registry.list_entries(enabled_only=False)
    for warning in warnings:
        click.echo(f"skeleton: warning: {warning}", err=True)
    stale_after = settings.registry.stale_after
    if as_json:
        click.echo(json.dumps([{
            "id": e.node.id, "host": e.node.host, "port": e.node.port, "user": e.node.user,
            "roles": list(e.node.roles), "app_dir": e.node.app_dir, "enabled": e.enabled,
            "approved": e.approved, "state": e.state, "daemon_state": e.daemon_state,
            "code_version": e.code_version,
            "seen_ago": e.seen_ago, "stale": e.is_stale(stale_after)} for e in entries],
            indent=2))
        return 0
    rows = [[e.node.id, e.node.host, ",".join(e.node.roles), e.state,
             e.daemon_state or "-",
             "-" if e.seen_ago is None else f"{e.seen_ago:.0f}s ago"
             + (" (stale)" if e.is_stale(stale_after) else ""),
             (e.code_version or "-")[:12]] for e in entries]
    render.table(None, ["node", "host", "roles", "state", "daemon", "heartbeat", "version"],
                 rows)
    return 0


@nodes.command("add")
@click.argument("node_id")
@click.argument("host")
@click.option("--port", type=click.IntRange(1, 65535), default=None)
@click.option("--user", default=None)
@click.option("--role", "roles", multiple=True, help="Repeatable.")
@click.option("--app-dir", default=None)
@click.option("--credentials", is_flag=True,
              help="Also create the node's own database role and print its DSN.")
@_config_option
@click.pass_context
def nodes_add(ctx: click.Context, node_id: str, host: str, port: int | None, user: str | None,
              roles: tuple[str, ...], app_dir: str | None, credentials: bool,
              config: str | None) -> int:
    """Add (or update) a node; it is approved (a target)."""
    from skeleton_app.registry import parse_node

    info: dict[str, Any] = {"id": node_id, "host": host, "roles": list(roles)}
    for key, value in (("port", port), ("user", user), ("app_dir", app_dir)):
        if value is not None:
            info[key] = value
    spec = parse_node(info)
    with _registry(ctx, config) as registry:
        created = registry.upsert_node(spec)
        dsn = registry.issue_credentials(node_id) if credentials else None
    click.echo(f"{'added' if created else 'updated'} {node_id}")
    if dsn:
        click.echo(dsn)
    return 0


def _toggle(ctx: click.Context, config: str | None, node_id: str, action: str) -> int:
    with _registry(ctx, config) as registry:
        if action == "remove":
            found = registry.remove_node(node_id)
        elif action == "approve":
            found = registry.approve(node_id)
        else:
            found = registry.set_enabled(node_id, action == "enable")
    if not found:
        raise UsageError(f"unknown node {node_id!r}")
    click.echo(f"{action}d {node_id}" if action != "remove" else f"removed {node_id}")
    return 0


def _node_action(action: str, help_text: str) -> None:
    """`skeleton nodes remove|enable|disable NODE_ID`: one command each, one helper."""

    @nodes.command(action, help=help_text)
    @click.argument("node_id")
    @_config_option
    @click.pass_context
    def command(ctx: click.Context, node_id: str, config: str | None) -> int:
        return _toggle(ctx, config, node_id, action)


for _action, _help in (("remove", "Remove a node from the table."),
                       ("approve", "Make a node that registered itself (pending) a target."),
                       ("enable", "Target this node again."),
                       ("disable", "Stop targeting this node (it stays registered).")):
    _node_action(_action, _help)


@nodes.command("credentials")
@click.argument("node_id")
@click.option("--install", is_flag=True,
              help="Write them over SSH to the node's registry.node_dsn_file (mode 0600).")
@_config_option
@click.pass_context
def nodes_credentials(ctx: click.Context, node_id: str, install: bool,
                      config: str | None) -> int:
    """Give NODE_ID's daemon a database role of its own (new password: the old one stops
    working); print its DSN, or --install it on the node."""
    if not install:
        with _registry(ctx, config) as registry:
            click.echo(registry.issue_credentials(node_id))
        return 0
    from skeleton_app.ops.credentials import install_credentials

    cluster_, nodes = _select(_prepare(ctx, config, None), [node_id], (), ())
    result = install_credentials(cluster_, nodes[0])
    if result.error_kind is not None or result.exit_code != 0:
        raise NodeError(result.error_kind or NodeErrorKind.ERROR,
                        "credentials not installed (the new password is already"
                        f" in force): {result.error or result.stderr.strip()}", node=node_id)
    click.echo(f"installed {node_id}'s credentials in {cluster_.settings.registry.node_dsn_file}"
               " on the node; restart its daemon to use them")
    return 0


@nodes.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
@_config_option
@click.pass_context
def nodes_import(ctx: click.Context, path: str, config: str | None) -> int:
    """Read a config.yaml-style `nodes:` list (a YAML file) into the table."""
    import yaml

    from skeleton_app.registry import import_nodes

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: cannot read nodes: {exc}") from None
    items = data.get("nodes") if isinstance(data, dict) else data
    with _registry(ctx, config) as registry:
        done = import_nodes(registry, items, source=path)
    click.echo(f"imported {len(done.added)} new, {len(done.updated)} updated")
    return 0


@nodes.command("export")
@_config_option
@click.pass_context
def nodes_export(ctx: click.Context, config: str | None) -> int:
    """Print the table as a config.yaml `nodes:` list."""
    import yaml

    from skeleton_app.registry import export_nodes

    with _registry(ctx, config) as registry:
        items, warnings = export_nodes(registry)
    for warning in warnings:
        click.echo(f"skeleton: warning: {warning}", err=True)
    click.echo(yaml.safe_dump({"nodes": items}, sort_keys=False), nl=False)
    return 0


@cli.group()
def runs() -> None:
    """Recorded cluster operations (with a registry)."""


@runs.command("list")
@_config_option
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@click.pass_context
def runs_list(ctx: click.Context, config: str | None, limit: int) -> int:
    """The latest runs."""
    from skeleton_app.app.views import common as render

    with _registry(ctx, config) as registry:
        records = registry.list_runs(limit=limit)
    rows = [[str(r.id), r.started_at.strftime("%Y-%m-%d %H:%M:%S"), r.who, r.operation,
             ",".join(r.selection)[:40], "-" if r.exit_code is None else str(r.exit_code),
             f"{r.ok_count}/{r.node_count}", "-" if r.duration is None else f"{r.duration:.2f}s"]
            for r in records]
    render.table(None, ["run", "started", "who", "operation", "selection", "exit", "ok",
                        "took"], rows)
    return 0


@runs.command("show")
@click.argument("run_id", type=int)
@_config_option
@click.pass_context
def runs_show(ctx: click.Context, run_id: int, config: str | None) -> int:
    """One run with its per-node outcomes."""
    from skeleton_app.app.views import common as render

    with _registry(ctx, config) as registry:
        record = registry.get_run(run_id)
    if record is None:
        raise UsageError(f"unknown run {run_id}")
    click.echo(f"run {record.id}: {record.operation} by {record.who} at "
               f"{record.started_at:%Y-%m-%d %H:%M:%S}, exit {record.exit_code}")
    click.echo(f"arguments: {json.dumps(record.arguments)}")
    rows = [[n.node_id, "-" if n.exit_code is None else str(n.exit_code),
             f"{n.error_kind}: {n.error}" if n.error_kind else "",
             "-" if n.duration is None else f"{n.duration:.2f}s",
             (n.stdout_tail or n.stderr_tail).strip()[-60:]] for n in record.nodes]
    render.table(None, ["node", "exit", "error", "took", "output (tail)"], rows)
    return 0


@cli.group("daemon")
def node_daemon() -> None:
    """The node daemon itself (what `cluster daemon start` runs on each node)."""


@node_daemon.command("run")
@_config_option
@click.pass_context
def daemon_run(ctx: click.Context, config: str | None) -> int:
    """Register this node, heartbeat, answer GET /health; SIGTERM stops it."""
    from skeleton_app.agent import run_daemon

    return run_daemon(_prepare(ctx, config, None).settings())


@cli.group()
def testbed() -> None:
    """A local test cluster: real sshd hosts in network namespaces (needs root)."""


def _testbed_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--dir", "state_dir", default=None, metavar="DIR",
                      help="State directory (default /tmp/skeleton-testbed-INSTANCE or"
                           " $SKELETON_TESTBED_DIR).")(fn)
    fn = click.option("--instance", type=click.IntRange(0, 200), default=0, show_default=True,
                      help="Which testbed (each has its own subnet 10.213.INSTANCE.0/24).")(fn)
    return fn


@testbed.command("up")
@click.argument("names", nargs=-1)
@click.option("--nodes", "count", type=click.IntRange(1, 250), default=None,
              help="How many hosts (node-01..node-NN); default 3.")
@click.option("--rate", default=None, metavar="RATE", help="Shape every link, e.g. 200mbit.")
@click.option("--db", is_flag=True, help="Also start a throwaway PostgreSQL registry.")
@_testbed_options
def testbed_up(names: tuple[str, ...], count: int | None, rate: str | None, db: bool,
               instance: int, state_dir: str | None) -> int:
    """Start N real SSH hosts and write a ready config file for `--config`."""
    from skeleton_app.testing import testbed as tb

    bed = tb.up(count, names, rate=rate, db=db, instance=instance, state_dir=state_dir)
    for host in bed.hosts:
        click.echo(f"{host.id}\t{host.ip}\t{','.join(host.roles)}")
    if bed.db:
        click.echo(f"registry: PostgreSQL on 127.0.0.1:{bed.db.port} (DSN in the config)")
    click.echo(f"config: {bed.config_path}")
    click.echo(f"try: skeleton cluster status --config {bed.config_path}")
    return 0


@testbed.command("down")
@_testbed_options
def testbed_down(instance: int, state_dir: str | None) -> int:
    """Remove every host, link, namespace, process and the state dir (safe to run twice)."""
    from skeleton_app.testing import testbed as tb

    lines = tb.down(state_dir, instance=instance)
    removed = [ln for ln in lines if not ln.startswith("left ")]
    click.echo(f"removed {len(removed)} item(s)" if removed else "nothing to remove")
    for line in lines:
        if line.startswith("left "):  # named like ours, but nothing proves it is
            click.echo(f"skeleton: warning: {line}", err=True)
    return 0


@testbed.command("status")
@_testbed_options
def testbed_status(instance: int, state_dir: str | None) -> int:
    """List the test hosts and whether their sshd answers."""
    from skeleton_app.testing import testbed as tb

    hosts = tb.status(state_dir, instance=instance)
    for h in hosts:
        click.echo(f"{h.id}\t{h.ip}\t{'up' if h.reachable else 'DOWN'}")
    return 0 if hosts and all(h.reachable for h in hosts) else 1



def _exit(code: int) -> None:
    sys.exit(code)


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
        exit_(130)
    except click.ClickException as exc:
        exc.show()
        exit_(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Exit as exc:
        exit_(exc.exit_code)
    except SkeletonError as exc:
        click.echo(f"skeleton: error: {exc}", err=True)
        exit_(130 if cancel.cancelled() else exc.exit_code)
    except KeyboardInterrupt:
        click.echo("skeleton: interrupted", err=True)
        exit_(130)
    if cancel.cancelled():
        exit_(130)  # what ran was stopped, and the output said where
    exit_(rv if isinstance(rv, int) else 0)


def _exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown, which frees every object of the
    ~500 modules a command has loaded one by one: measured 25-40 ms of each command, as
    long as a warm command on all nodes. Everything is done by then: connections closed
    (`Ctx.close`), files written in `with` blocks; the standard streams are flushed here.
    A thread that is not a daemon still running (none of ours) gets the normal exit."""
    import contextlib
    import os
    import threading

    for stream in (sys.stdout, sys.stderr):
        # A closed pipe (`| head`): nothing left to say.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()
           if t is not threading.main_thread()):
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
