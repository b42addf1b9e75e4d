"""`skeleton daemon run` (the node daemon itself) and `skeleton testbed ...` (a local test
cluster). The testbed is test support: imported only inside its commands.
"""

from __future__ import annotations

import click

from skeleton_app.app.cli.options import F, config_option, prepare


@click.group("daemon")
def node_daemon() -> None:
    """The node daemon itself (what `cluster daemon start` runs on each node)."""


@node_daemon.command("run")
@config_option
@click.pass_context
def daemon_run(ctx: click.Context, config: str | None) -> int:
    """Register this node, heartbeat, answer GET /health; SIGTERM stops it."""
    from skeleton_app.agent import run_daemon

    return run_daemon(prepare(ctx, config, None).settings())


@click.group()
def testbed() -> None:
    """A local test cluster: real sshd hosts in network namespaces (needs root)."""


def _testbed_options(fn: F) -> F:
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
