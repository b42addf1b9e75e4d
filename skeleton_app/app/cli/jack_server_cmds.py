"""`skeleton jack status|start|stop|connect|disconnect`: the JACK servers of the nodes
(skeleton_app/ops/jack/server.py). Registered on the `skeleton jack` group when
`skeleton_app.app.cli` imports this module."""

from __future__ import annotations

import sys

import click

from skeleton_app.app.cli.completion import complete_nodes
from skeleton_app.app.cli.jack_cmds import jack
from skeleton_app.app.cli.options import (
    config_option,
    json_option,
    output_options,
    prepare,
    select,
    selection_options,
)


def _server(ctx: click.Context, action: str, config: str | None, node_specs: tuple[str, ...],
            roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
            as_json: bool) -> int:
    from skeleton_app.app import commands
    from skeleton_app.app.views.jack_server import dropped_text, server_text, status_json

    session, nodes = select(ctx, config, fanout, node_specs, roles, exclude)
    done = commands.jack_server(session, nodes, action)
    if as_json:
        click.echo(status_json(done.result, done.dropped) if action == "status"
                   else done.result.to_json())
    else:
        server_text(done.result, nodes, sys.stdout)
        dropped_text(done.dropped, sys.stdout)
    return done.exit_code


@jack.command("status")
@selection_options
@json_option
@click.pass_context
def jack_status(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
                roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
                as_json: bool) -> int:
    """Each node's JACK server: up or not, sample rate, period, xruns, ports and their
    connections (exit 1 when a server is down or jackd2 is missing somewhere)."""
    return _server(ctx, "status", config, node_specs, roles, exclude, fanout, as_json)


@jack.command("start")
@selection_options
@json_option
@click.pass_context
def jack_start(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
               roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
               as_json: bool) -> int:
    """Start jackd with each node's configured driver (jack: section) and wait until it
    answers; a server that already answers is left as it is."""
    return _server(ctx, "start", config, node_specs, roles, exclude, fanout, as_json)


@jack.command("stop")
@selection_options
@json_option
@click.pass_context
def jack_stop(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
              roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
              as_json: bool) -> int:
    """Stop the jackd that `skeleton jack start` started: SIGTERM, then SIGKILL after 5 s
    (a server skeleton did not start is left running)."""
    return _server(ctx, "stop", config, node_specs, roles, exclude, fanout, as_json)


def _ports(ctx: click.Context, config: str | None, node: str, source: str, dest: str,
           as_json: bool, *, disconnect: bool) -> int:
    from skeleton_app.app import commands
    from skeleton_app.app.views.jack_server import connect_text

    session = prepare(ctx, config, None).session()
    done = commands.jack_connect(session, node, source, dest, disconnect=disconnect)
    if as_json:
        click.echo(done.result.to_json())
    else:
        connect_text(done.result, sys.stdout, sys.stderr)
    return done.exit_code


_NODE = click.argument("node", metavar="NODE", shell_complete=complete_nodes)


@jack.command("connect")
@_NODE
@click.argument("source", metavar="PORT_A")
@click.argument("dest", metavar="PORT_B")
@config_option
@output_options
@click.pass_context
def jack_connect(ctx: click.Context, node: str, source: str, dest: str, config: str | None,
                 as_json: bool) -> int:
    """Connect PORT_A to PORT_B on NODE's JACK server (names as `jack status` lists them;
    already connected is success)."""
    return _ports(ctx, config, node, source, dest, as_json, disconnect=False)


@jack.command("disconnect")
@_NODE
@click.argument("source", metavar="PORT_A")
@click.argument("dest", metavar="PORT_B")
@config_option
@output_options
@click.pass_context
def jack_disconnect(ctx: click.Context, node: str, source: str, dest: str,
                    config: str | None, as_json: bool) -> int:
    """Disconnect PORT_A from PORT_B on NODE's JACK server (not connected is success)."""
    return _ports(ctx, config, node, source, dest, as_json, disconnect=True)
