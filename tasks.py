"""Invoke tasks: `inv status`, `inv exec --command "uptime" --node linux-01`, ...

Thin: each task selects nodes, calls the same library operation as `skeleton cluster ...`,
renders it with the same renderer and exits with the same code (see cli.py's contract).
"""

from __future__ import annotations

import sys

from invoke import Exit, task

from skeleton_app import render
from skeleton_app.cluster import Cluster
from skeleton_app.ops import status as status_op
from skeleton_app.ops.run import exec_command

_NODE_HELP = {
    "node": "Nodes: ids, ranges (linux-[01-03]), globs; comma-separated.",
    "role": "Only nodes with this role.",
    "exclude": "Leave these nodes out.",
    "config": "Config file (default $SKELETON_CONFIG, else ./config.yaml).",
}


def _cluster(config: str | None) -> Cluster:
    return Cluster.from_config(config)


def _split(value: str | None) -> list[str]:
    # Selection specs are split (ranges keep their inner commas) by the library itself.
    return [value] if value else []


@task(help={**_NODE_HELP, "command": "The shell command to run, exactly as typed.",
            "timeout": "Kill the command on the node after this many seconds."})
def exec(c, command, node=None, role=None, exclude=None, timeout=None, config=None):
    """Run a command on every selected node, in parallel."""
    with _cluster(config) as cluster:
        nodes = cluster.select(_split(node), roles=_split(role), exclude=_split(exclude))
        result = exec_command(cluster, command, nodes,
                              timeout=float(timeout) if timeout else None)
        render.exec_text(result, sys.stdout)
    raise Exit(code=result.exit_code())


@task(help=_NODE_HELP)
def status(c, node=None, role=None, exclude=None, config=None):
    """Daemon, load, memory, GPU and disk of every selected node."""
    with _cluster(config) as cluster:
        nodes = cluster.select(_split(node), roles=_split(role), exclude=_split(exclude))
        result = status_op.status(cluster, nodes)
        columns, rows = status_op.rows(result, nodes)
        render.table(None, columns, rows)
    raise Exit(code=result.exit_code())
