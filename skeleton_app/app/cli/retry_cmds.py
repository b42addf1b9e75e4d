"""`skeleton runs retry RUN`: a recorded run's operation again, with its recorded arguments,
on its failed and unreachable nodes only (`app.retry`), rendered with that operation's view.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from skeleton_app.app.cli.options import list_hosts_option, output_options, prepare
from skeleton_app.app.cli.registry_cmds import runs

if TYPE_CHECKING:
    from skeleton_app.app.commands import Done


@runs.command("retry")
@click.argument("run_ref", metavar="RUN")
@click.option("--config", "-c", "config", default=None, metavar="PATH",
              help="Config file (default $SKELETON_CONFIG, else ./config.yaml).")
@click.option("--fanout", type=click.IntRange(min=1), default=None,
              help="At most this many nodes in flight (default ssh.fanout).")
@list_hosts_option
@output_options
@click.pass_context
def runs_retry(ctx: click.Context, run_ref: str, config: str | None, fanout: int | None,
               as_json: bool) -> int:
    """Run RUN's operation again, with its recorded arguments, on RUN's failed and
    unreachable nodes only; journaled as a new run. RUN: a run id (`skeleton runs list`,
    with a registry) or `last` (the last run of any operation by this user on this
    machine; without a registry, the local state file). Retries exec, status, deploy,
    bootstrap, daemon, sync-models, copy and fetch runs; others exit 2."""
    from skeleton_app.app import retry

    state = prepare(ctx, config, fanout)
    session = state.session()
    plan = retry.plan(session, run_ref)
    if state.list_hosts:
        for node in plan.nodes:
            click.echo(node.id)
        return 0
    click.echo(f"skeleton: retrying {plan.run.name} ({plan.run.describe()}) on"
               f" {', '.join(n.id for n in plan.nodes)}", err=True)
    started = time.monotonic()
    done = retry.run(session, plan)
    if as_json:
        click.echo(done.result.to_json())
    else:
        _render(plan.operation, done, session.settings.registry.stale_after, started,
                plan.run.arguments)
    return done.exit_code


def _render(operation: str, done: Done[Any], stale_after: float, started: float,
            arguments: Mapping[str, Any]) -> None:
    """The view the operation's own command uses."""
    from skeleton_app.app.commands import StatusDone, SyncDone
    from skeleton_app.app.views import common as render

    result, nodes = done.result, done.nodes
    if operation == "exec":
        from skeleton_app.app.views.exec import exec_view

        exec_view(result, sys.stdout)
    elif operation == "status":
        from skeleton_app.app.views import status as status_view

        rows = done.registry_rows if isinstance(done, StatusDone) else None
        status_view.status_text(result, nodes, rows, stale_after)
    elif operation.startswith("deploy"):
        from skeleton_app.app.views.deploy import deploy_text

        deploy_text(result, sys.stdout, list_changes=operation == "deploy-dry-run",
                    started=started)
    elif operation == "bootstrap":
        from skeleton_app.app.views.bootstrap import bootstrap_text, failures

        bootstrap_text(result)
        for line in failures(result):
            click.echo(f"skeleton: {render.sanitize(line)}", err=True)
    elif operation == "copy":
        from skeleton_app.app.views.copy import copy_text

        copy_text(result, sys.stdout)
    elif operation == "fetch":
        from skeleton_app.app.views.copy import fetch_text, skipped_lines

        fetch_text(result, sys.stdout, local_dir=str(arguments.get("local_dir")))
        for line in skipped_lines(result):
            click.echo(f"skeleton: warning: {line}", err=True)
    elif operation.startswith("daemon "):
        from skeleton_app.app.views.daemon import daemon_text

        daemon_text(result, nodes, sys.stdout)
    elif isinstance(done, SyncDone):
        from skeleton_app.app.views.sync_models import summary_rows

        render.table(f"sync-models from {done.source.id}",
                     ["node", "status", "moved", "time", "rate", "how / why"],
                     summary_rows(result))
