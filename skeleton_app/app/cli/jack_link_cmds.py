"""`skeleton jack link|unlink|mesh`: the JackTrip links between nodes (ops/jack/links.py),
registered on the `skeleton jack` group.

Exit codes as every cluster command: 0 done (mesh: every recorded link up, no unexpected
jacktrip), 1 an end failed (port in use, jacktrip or JACK server missing; mesh: a link down,
missing an end, or unexpected), 2 usage (unknown node: nothing ran), 3 registry,
4 a node unreachable, 130 interrupted.
"""

from __future__ import annotations

import click

from skeleton_app.app.cli.completion import complete_nodes
from skeleton_app.app.cli.jack_cmds import jack
from skeleton_app.app.cli.options import (
    Seconds,
    config_option,
    json_option,
    output_options,
    prepare,
    select,
    selection_options,
)
from skeleton_app.errors import ExitCode


@jack.command("link")
@click.argument("hub", shell_complete=complete_nodes)
@click.argument("client", shell_complete=complete_nodes)
@click.option("--channels", type=click.IntRange(1, 64), default=None,
              help="Audio channels each way (default: jack.channels).")
@click.option("--port-offset", type=click.IntRange(0, 65535), default=None,
              help="Port = jack.udp_base_port + N (default: the first no link uses).")
@click.option("--timeout", type=Seconds(), default=None,
              help="Seconds to wait for both ends to connect (default 15).")
@config_option
@output_options
@click.pass_context
def link_cmd(ctx: click.Context, hub: str, client: str, channels: int | None,
             port_offset: int | None, timeout: float | None, config: str | None,
             as_json: bool) -> int:
    """A JackTrip link: the hub server on HUB, its client on CLIENT (both need a running
    JACK server: `skeleton jack start`). Made again (restored) when it is down."""
    from skeleton_app.app import commands
    from skeleton_app.app.views import jack_links as view

    session = prepare(ctx, config, None).session()
    done = commands.jack_link(session, hub, client, channels=channels,
                              port_offset=port_offset, timeout=timeout)
    click.echo(view.link_json(done.result)) if as_json else view.link_text(done.result)
    return done.exit_code


@jack.command("unlink")
@click.argument("a", metavar="HUB", shell_complete=complete_nodes)
@click.argument("b", metavar="CLIENT", shell_complete=complete_nodes)
@config_option
@output_options
@click.pass_context
def unlink_cmd(ctx: click.Context, a: str, b: str, config: str | None, as_json: bool) -> int:
    """Stop both ends of the link between two nodes (either order) and forget it."""
    from skeleton_app.app import commands
    from skeleton_app.app.views import jack_links as view

    session = prepare(ctx, config, None).session()
    done = commands.jack_unlink(session, a, b)
    click.echo(view.link_json(done.result)) if as_json else view.link_text(done.result)
    return done.exit_code


@jack.command("mesh")
@selection_options
@json_option
@click.pass_context
def mesh_cmd(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
             roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
             as_json: bool) -> int:
    """Every JackTrip link: ends, channels, state (up, down, missing end, unexpected),
    queue and buffer strategy. The selection says where to look for unexpected jacktrip
    processes too (default: every node); a link's own ends are always looked at."""
    from skeleton_app.app import commands
    from skeleton_app.app.views import jack_links as view

    session, nodes = select(ctx, config, fanout, node_specs, roles, exclude)
    mesh = commands.jack_mesh(session, nodes)
    click.echo(view.mesh_json(mesh)) if as_json else view.mesh_text(mesh)
    code = mesh.result.exit_code()
    if code == ExitCode.OK and any(s.state != "up" for s in mesh.links):
        return ExitCode.FAILED
    return code
