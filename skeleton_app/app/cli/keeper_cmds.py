"""`skeleton keeper status|stop`: the per-user connection keeper of warm mode
(skeleton_app/keeper)."""

from __future__ import annotations

import json
import os
import time

import click

from skeleton_app.app.cli.options import output_options


@click.group()
def keeper() -> None:
    """The connection keeper: holds SSH connections between cluster commands (ssh.persist)."""


@keeper.command("status")
@output_options
def status_cmd(as_json: bool) -> int:
    """Is a keeper running, and which connections does it hold (exit 1: none running)."""
    from skeleton_app.app.views import common as render
    from skeleton_app.keeper.client import request
    from skeleton_app.keeper.paths import keeper_paths
    from skeleton_app.ssh.openssh import masters

    paths = keeper_paths()
    state = request(paths, "status")
    shared = len(masters(str(paths.dir)))  # rsync's and fetch's OpenSSH masters
    if state is None:
        click.echo(json.dumps({"running": False, "socket": str(paths.socket),
                               "openssh_masters": shared}) if as_json
                   else f"no keeper running ({paths.socket})")
        if shared and not as_json:
            click.echo(f"OpenSSH connections kept for rsync and fetch: {shared}")
        return 1
    if as_json:
        state.pop("op", None)  # the protocol's word, not part of the state
        click.echo(json.dumps({"running": True, **state, "log": str(paths.log),
                               "openssh_masters": shared}, indent=2))
        return 0
    # `--format tsv` is the table alone on stdout (a header line, one line per row): the
    # keeper's own lines go to stderr there, so `cut`/`awk` read the rows only.
    prose = render.table_format() == "tsv"
    up = time.time() - float(state["started"])
    click.echo(f"keeper pid {state['pid']}, up {up:.0f}s, persist {state['persist']:g}s,"
               f" socket {state['socket']}, log {paths.log}", err=prose)
    if "served" in state:  # a keeper of this version: exec commands it ran whole
        declined = int(state["declined"])
        last = f" (last: {state['last_declined']})" if declined else ""
        click.echo(f"exec commands served whole: {state['served']}, declined: {declined}{last}",
                   err=prose)
    if shared:
        click.echo(f"OpenSSH connections kept for rsync and fetch: {shared}", err=prose)
    # Sorted by node, as every other node table; a connection in use is not idle.
    rows = [[c["node"], f"{c['user']}@{c['host']}:{c['port']}",
             "-" if c["busy"] else f"{c['idle']:.0f}s", f"{c['persist']:g}s", str(c["busy"])]
            for c in sorted(state["connections"], key=lambda c: (c["node"], c["host"]))]
    render.table("connections held", ["node", "login", "idle", "persist", "running"], rows)
    return 0


@keeper.command("stop")
@click.option("--force", is_flag=True,
              help="Stop it even while commands run through it (their nodes end `lost`).")
def stop_cmd(force: bool) -> int:
    """Stop the keeper (its connections close; the next cluster command starts a new one).
    Refused while commands run through it (exit 1), unless --force."""
    from skeleton_app.keeper.client import request
    from skeleton_app.keeper.paths import keeper_paths

    paths = keeper_paths()
    state = None if force else request(paths, "status")
    if state is not None and int(state.get("requests", 0)) > 0:
        # Another terminal's command would be cut off mid-way (`lost`, exit 4, it may have
        # run): as `ssh -O stop` lets a master's sessions finish, never by surprise.
        busy = sorted({c["node"] for c in state["connections"] if c["busy"]})
        on = f" (on {', '.join(busy)})" if busy else ""
        click.echo(f"skeleton: error: the keeper is running {state['requests']} command(s)"
                   f" now{on}: stopping it would cut them off (their nodes end `lost`, exit"
                   " 4). Wait for them, or: skeleton keeper stop --force", err=True)
        return 1
    reply = request(paths, "stop")
    if reply is None:
        click.echo("no keeper running")
    else:
        pid = int(reply["pid"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        click.echo(f"keeper {pid} stopped" if not _alive(pid)
                   else f"keeper {pid} still exiting")
    _close_masters(str(paths.dir))
    return 0


def _close_masters(directory: str) -> None:
    """rsync's and fetch's OpenSSH masters (`ssh.openssh.share_connections`) go too."""
    from skeleton_app.ssh.openssh import close_masters

    closed = close_masters(directory)
    if closed:
        click.echo(f"closed {closed} OpenSSH connection(s) of rsync and fetch")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
