"""`skeleton cluster copy` and `skeleton cluster fetch`: files to and from the nodes (clush
--copy / --rcopy, pdcp / rpdcp, ansible copy / fetch). Registered into the `cluster` group by
`app.cli` (`COMMANDS`). Arguments are checked before anything runs (exit 2, one line).
"""

from __future__ import annotations

import sys

import click

from skeleton_app.app.cli.options import json_option, select, selection_options
from skeleton_app.errors import UsageError


def _split(paths: tuple[str, ...], what: str) -> tuple[tuple[str, ...], str]:
    if len(paths) < 2:
        raise UsageError(f"{what}: the last argument is where they go")
    return paths[:-1], paths[-1]


@click.command("copy")
@click.argument("paths", nargs=-1, required=True, metavar="LOCAL... REMOTE_DIR")
@selection_options
@click.option("--mode", default=None, metavar="MODE",
              help="Octal mode of every copied file (e.g. 0640); directories keep theirs.")
@click.option("--preserve", "-p", is_flag=True,
              help="Keep each file's mode and modification time (else: like cp).")
@json_option
@click.pass_context
def copy_cmd(ctx: click.Context, paths: tuple[str, ...], config: str | None,
             node_specs: tuple[str, ...], roles: tuple[str, ...], exclude: tuple[str, ...],
             fanout: int | None, mode: str | None, preserve: bool, as_json: bool) -> int:
    """Copy LOCAL files and directories into REMOTE_DIR (absolute or ~/...) on every
    selected node, in parallel; each file is written to a temporary name and renamed."""
    from skeleton_app.app import commands
    from skeleton_app.app.views.copy import TransferProgress, copy_text

    sources, remote_dir = _split(paths, "copy needs LOCAL... REMOTE_DIR")
    # Bad arguments: exit 2 here, before anything is selected or contacted.
    request = commands.CopyRequest.parse(sources, remote_dir, mode=mode, preserve=preserve)
    session, nodes = select(ctx, config, fanout, node_specs, roles, exclude)
    done = commands.copy(session, nodes, request,
                         progress=TransferProgress(nodes, enabled=not as_json))
    if as_json:
        click.echo(done.result.to_json())
    else:
        copy_text(done.result, sys.stdout)
    return done.exit_code


@click.command("fetch")
@click.argument("paths", nargs=-1, required=True, metavar="REMOTE... LOCAL_DIR")
@selection_options
@click.option("--max-bytes", "max_bytes", default="4G", show_default=True, metavar="SIZE",
              help="At most this much file data from each node (64K, 16M, 1G); a node that"
                   " sends more is stopped there.")
@json_option
@click.pass_context
def fetch_cmd(ctx: click.Context, paths: tuple[str, ...], config: str | None,
              node_specs: tuple[str, ...], roles: tuple[str, ...], exclude: tuple[str, ...],
              fanout: int | None, max_bytes: str, as_json: bool) -> int:
    """Fetch REMOTE files and directories (absolute or ~/...) from every selected node into
    LOCAL_DIR/<node>/. Symlinks on the nodes are skipped and named, never followed."""
    from skeleton_app.app import commands
    from skeleton_app.app.views.copy import TransferProgress, fetch_text, skipped_lines

    remotes, local_dir = _split(paths, "fetch needs REMOTE... LOCAL_DIR")
    # Bad ones: exit 2 here.
    request = commands.FetchRequest.parse(remotes, local_dir, max_bytes=max_bytes)
    session, nodes = select(ctx, config, fanout, node_specs, roles, exclude)
    done = commands.fetch(session, nodes, request,
                          progress=TransferProgress(nodes, enabled=not as_json))
    if as_json:
        click.echo(done.result.to_json())
    else:
        fetch_text(done.result, sys.stdout, local_dir=local_dir)
        for line in skipped_lines(done.result):
            click.echo(f"skeleton: warning: {line}", err=True)
    return done.exit_code


COMMANDS = (copy_cmd, fetch_cmd)
