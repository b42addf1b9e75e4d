"""What the Click commands share: the `Seconds` parameter type, the selection and config
options, and `Ctx`, the per-process state on the root context (one `app.commands.Session`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from skeleton_app.app.cli.completion import complete_nodes
from skeleton_app.app.commands import Selection, Session

if TYPE_CHECKING:
    from skeleton_app.cluster import Cluster
    from skeleton_app.config import Settings
    from skeleton_app.nodes import Node

F = TypeVar("F", bound=Callable[..., Any])

SELECTION_HELP = ("Nodes: ids, ranges (linux-[01-03]), globs (linux-*), addresses, @GROUP or"
                  " @ROLE, @failed (the failed and unreachable nodes of your last run, of any"
                  " operation); repeatable, comma-separated.")


class Seconds(click.ParamType[float, Any]):
    """A finite number of seconds, at most a year (click's FloatRange lets `nan` through
    every bound, and `inf` overflowed the node's timeouts: exit 4 instead of 2)."""

    name = "seconds"

    def __init__(self, *, zero: bool = False):
        self.zero = zero

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
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


def _warn(line: str) -> None:
    click.echo(line, err=True)


class Ctx:
    """Lazily built shared state: the command's `Session` (settings, cluster, registry
    connection), built once per process on first use and closed with the root context."""

    def __init__(self, config: str | None):
        self.config = config
        self.overrides: dict[str, Any] = {}
        self._session: Session | None = None
        # Set by the `--format` and `--list-hosts` options (`expose_value=False`: no command
        # signature carries them; `select` and the views read them from here).
        self.output_format: str | None = None
        self.list_hosts = False
        self.persist = False  # set by the `cluster` group unless --no-persist
        from skeleton_app.app.views import common as render

        render.set_format(None)  # one command per Ctx: no format left over from the last one

    def session(self) -> Session:
        if self._session is None:
            settings = connector = None
            if self.persist:  # a `cluster` command: warm mode (skeleton_app/keeper)
                from skeleton_app.config import load_config
                from skeleton_app.keeper.client import keeper_runner

                settings = load_config(self.config, overrides=self.overrides)
                connector = keeper_runner(settings.ssh, warn=_warn)
                if connector is not None:  # rsync's and fetch's ssh keep masters too
                    from skeleton_app.ssh.openssh import share_connections

                    share_connections(str(connector.paths.dir), settings.ssh.persist)
            self._session = Session(self.config, overrides=self.overrides, warn=_warn,
                                    settings=settings, connector=connector)
        return self._session

    def settings(self) -> Settings:
        return self.session().settings

    def cluster(self) -> Cluster:
        return self.session().cluster()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        if self.persist:  # the command's, not the next one's (tests run many in a process)
            from skeleton_app.ssh.openssh import share_connections

            share_connections(None)


FORMATS = ("table", "plain", "tsv", "json")


def _store_format(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        from skeleton_app.app.views import common as render

        ctx.find_root().obj.output_format = value
        render.set_format(value)


def _store_list_hosts(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().obj.list_hosts = True


format_option = click.option(
    "--format", "output_format", type=click.Choice(FORMATS), default=None,
    expose_value=False, callback=_store_format,
    help="table (default on a terminal), plain (default when piped), tsv or json.")
list_hosts_option = click.option(
    "--list-hosts", is_flag=True, expose_value=False, callback=_store_list_hosts,
    help="Print the selected nodes, one per line, and run nothing.")


def output_format(ctx: click.Context) -> str | None:
    """The command's `--format`, None when not given (the view picks by the terminal)."""
    state: Ctx | None = ctx.find_root().obj
    return state.output_format if state is not None else None


def wants_json(ctx: click.Context, as_json: bool) -> bool:
    """`--json` or `--format json`: the one test every command's JSON branch makes."""
    return as_json or output_format(ctx) == "json"


def _json_value(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    # Click processes the options given on the command line first, so `--format json` is
    # stored by the time this runs even when `--json` is absent: `as_json` says both.
    return wants_json(ctx, value)


def _no_persist(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().obj.persist = False


# `skeleton cluster status --no-persist` as well as `skeleton cluster --no-persist status`:
# where a user types it after the command, it means the same (hidden: the group documents it).
no_persist_option = click.option("--no-persist", is_flag=True, expose_value=False, hidden=True,
                                 callback=_no_persist)


def selection_options(fn: F) -> F:
    fn = no_persist_option(fn)
    fn = format_option(fn)
    fn = list_hosts_option(fn)
    fn = click.option("--fanout", type=click.IntRange(min=1), default=None,
                      help="At most this many nodes in flight (default ssh.fanout).")(fn)
    fn = click.option("--exclude", "exclude", multiple=True, metavar="SPEC",
                      shell_complete=complete_nodes, help="Leave these nodes out.")(fn)
    fn = click.option("--role", "roles", multiple=True, metavar="ROLE",
                      help="Only nodes with this role; repeatable.")(fn)
    fn = click.option("--node", "-n", "node_specs", multiple=True, metavar="SPEC",
                      shell_complete=complete_nodes, help=SELECTION_HELP)(fn)
    fn = click.option("--config", "-c", "config", default=None, metavar="PATH",
                      help="Config file (default $SKELETON_CONFIG, else ./config.yaml).")(fn)
    return fn


config_option = click.option("--config", "-c", "config", default=None, metavar="PATH",
                             help="Config file.")
json_option = click.option("--json", "as_json", is_flag=True, callback=_json_value,
                           help="Print the whole result as JSON (= --format json).")


def output_options(fn: F) -> F:
    """`--format` and `--json` for a command without `selection_options` (which carries
    `--format` already): one line per command."""
    return format_option(json_option(fn))


def prepare(ctx: click.Context, config: str | None, fanout: int | None) -> Ctx:
    """The root's `Ctx`, with this command's `--config` and `--fanout` applied."""
    state: Ctx = ctx.find_root().obj
    if config:
        state.config = config
    if fanout:
        state.overrides["ssh.fanout"] = fanout
    return state


def select(ctx: click.Context, config: str | None, fanout: int | None,
           node_specs: Sequence[str], roles: Sequence[str], exclude: Sequence[str], *,
           listed: Callable[[Session, tuple[Node, ...]], Sequence[Node]] | None = None
           ) -> tuple[Session, tuple[Node, ...]]:
    """The session and the nodes a command's selection options name; `listed`: which of
    them `--list-hosts` prints, when the command writes to fewer than it selects."""
    state = prepare(ctx, config, fanout)
    session = state.session()
    nodes = session.select(Selection(node_specs, roles, exclude))
    if state.list_hosts:
        # `pdsh -q`, `ansible --list-hosts`: the selection as resolved, nothing runs.
        for node in listed(session, nodes) if listed is not None else nodes:
            click.echo(node.id)
        raise click.exceptions.Exit(0)
    return session, nodes
