"""`skeleton cluster rollback` and `skeleton cluster releases` (deploy.strategy: releases;
ops/deploy/releases.py): registered in the `cluster` group by cluster_cmds."""

from __future__ import annotations

import sys

import click

from skeleton_app.app.cli.options import Seconds, json_option, select, selection_options


@click.command("rollback")
@selection_options
@click.option("--to", "to", default=None, metavar="ID",
              help="Switch to this release (default: the one before the current release).")
@click.option("--restart", is_flag=True, help="Per node: restart the daemon after the switch.")
@click.option("--lock-wait", type=Seconds(zero=True), default=10.0, show_default=True,
              metavar="SECONDS", help="How long to wait for a deploy's lock on a node.")
@json_option
@click.pass_context
def rollback_cmd(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
                 roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
                 to: str | None, restart: bool, lock_wait: float, as_json: bool) -> int:
    """Point each node's `current` back at the previous release (or --to ID)."""
    from skeleton_app.app import commands
    from skeleton_app.app.views.releases import rollback_text

    session, nodes = select(ctx, config, fanout, node_specs, roles, exclude)
    done = commands.rollback(session, nodes, to=to, restart=restart, lock_wait=lock_wait)
    if as_json:
        click.echo(done.result.to_json())
    else:
        rollback_text(done.result, sys.stdout)
    return done.exit_code


@click.command("releases")
@selection_options
@json_option
@click.pass_context
def releases_cmd(ctx: click.Context, config: str | None, node_specs: tuple[str, ...],
                 roles: tuple[str, ...], exclude: tuple[str, ...], fanout: int | None,
                 as_json: bool) -> int:
    """List each node's releases, newest first; * marks the current one."""
    from skeleton_app.app import commands
    from skeleton_app.app.views.releases import releases_text

    session, nodes = select(ctx, config, fanout, node_specs, roles, exclude)
    done = commands.releases(session, nodes)
    if as_json:
        click.echo(done.result.to_json())
    else:
        releases_text(done.result, sys.stdout)
    return done.exit_code
