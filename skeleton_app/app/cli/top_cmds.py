"""`skeleton cluster top`: the live view of the selected nodes (registered into the `cluster`
group by `app.cli`). The picture comes from the registry (no SSH per refresh) or, without
one, from one status probe per refresh; the loop and its keys live in `app.top`.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from skeleton_app.app.cli.options import (
    Seconds,
    json_option,
    output_format,
    select,
    selection_options,
)
from skeleton_app.app.commands import Selection
from skeleton_app.errors import ExitCode, RegistryError

if TYPE_CHECKING:
    from skeleton_app.ops.picture import ClusterPicture

SORT_KEYS = ("name", "load", "mem", "gpu", "age")  # = app.views.top.SORT_KEYS (Rich-free here)


@click.command("top")
@selection_options
@click.option("--interval", type=Seconds(), default=2.0, show_default=True, metavar="SECONDS",
              help="Seconds between refreshes.")
@click.option("--sort", type=click.Choice(SORT_KEYS), default="load", show_default=True,
              help="Order of the rows (`s` cycles it while running).")
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts).")
@json_option
@click.pass_context
def top_cmd(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
            roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
            interval: float, sort: str, once: bool, as_json: bool) -> int:
    """Watch the selected nodes live: daemon, heartbeat age, load and memory history, GPU,
    disk and running jobs, refreshed every 2 s (keys: q quits, s changes the sort).

    With a registry nothing is sent to the nodes: the daemons' heartbeats are read from it.
    Without one each refresh probes every node once (as `cluster status`)."""
    from skeleton_app.app import top
    from skeleton_app.app.views import common as render

    if as_json and not once:
        raise click.UsageError("--json needs --once (a live view has no JSON form)")
    fmt = output_format(ctx)
    try:
        session, nodes = select(ctx, config, fanout, node_specs, roles, exclude)
        source = top.picture_source(session, nodes)
    except RegistryError:
        # A live view outlasts an outage, also one at its start: it selects the nodes once
        # the registry answers and says it is down meanwhile. A one-shot answer is exit 3.
        if once or ctx.find_root().obj.list_hosts:
            raise
        session = ctx.find_root().obj.session()
        selection = Selection(node_specs, roles, exclude)
        source = top.picture_source(session, lambda: session.select(selection))
    if once and (as_json or fmt in ("plain", "tsv", "table")):
        picture = source()
        if as_json:
            click.echo(json.dumps(top.picture_json(picture, sort), indent=2))
        else:
            from skeleton_app.app.views.top import COLUMNS, table_rows

            render.table(None, COLUMNS, table_rows(picture, sort))
        return _exit_code(picture)
    if once or not render.live_display(sys.stdout):
        from rich.console import Console

        # The terminal's width; piped: $COLUMNS, else 80 (Rich's rule).
        last = top.run_batch(source, interval=interval, sort=sort, out=sys.stdout,
                             width=Console().width, once=once)
        return _exit_code(last) if once else 0
    top.run_live(source, interval=interval, sort=sort)
    return 0


def _exit_code(picture: ClusterPicture) -> ExitCode:
    """`--once`: 3 when the registry could not be read (the frame says why), else 0."""
    if picture.problem:
        from skeleton_app.app.views.common import sanitize

        click.echo(f"skeleton: error: {sanitize(picture.problem)}", err=True)
        return ExitCode.REGISTRY
    return ExitCode.OK
