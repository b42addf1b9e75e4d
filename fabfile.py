"""Fabric tasks for people who use `fab`: per-host operations on the hosts given with -H.

    fab -H linux-01,linux-02 deploy              fab -H linux-01 uptime
    fab -H linux-03 run --command "df -h /"      fab -H linux-02 daemon --action restart
    fab -H 10.0.0.5 status                       fab -H linux-01 rollback --to ID

-H takes node ids from the configuration (user, port and identity from the node's entry) or
addresses (the `ssh` section's settings); `user@host` picks another user than your login
name. On its own, `fab` builds plain Fabric connections, which would add unknown host keys
without asking: these tasks never use that connection. Each looks its host up in skeleton's
configuration and runs through skeleton's connector (our host-key policy, identity and
timeouts), calling the same application command as `skeleton cluster ... --node HOST`
(`skeleton_app.app.commands`, which journals the run in the registry as it does for them),
with the same renderer and exit codes (0 ok, 1 failed, 2 usage, 3 registry, 4 unreachable or
refused). Like any Fabric task, a host that fails stops
the run. The configuration: `--config PATH` on a task, else $SKELETON_CONFIG, else
./config.yaml.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fabric import Connection, task
from invoke import Exit

from skeleton_app.app import commands
from skeleton_app.app.commands import Done, Session
from skeleton_app.app.views import status as status_view
from skeleton_app.app.views.daemon import daemon_text
from skeleton_app.app.views.deploy import deploy_text
from skeleton_app.app.views.exec import exec_text
from skeleton_app.errors import SkeletonError, UsageError
from skeleton_app.nodes import Node, validate_fab_argv

_CONFIG = "Config file (default $SKELETON_CONFIG, else ./config.yaml)."


def _check_hosts() -> None:
    """fab builds a Connection for each `-H` host before any task of ours runs: an empty
    host (`-H ,`) is a traceback there, and `-H @stt` reaches a task as host `stt`. So the
    list is checked as fab loads this file: one clear line, exit 2, nothing runs."""
    try:
        validate_fab_argv(sys.argv)
    except SkeletonError as exc:
        print(f"skeleton: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


_check_hosts()
_JSON = "Print the whole result as JSON."


@contextmanager
def _target(c: Connection, config: str | None) -> Iterator[tuple[Session, Node]]:
    """The application session and the node that -H named, with skeleton's settings (not
    fab's connection). A SkeletonError becomes one line and its exit code."""
    try:
        if not isinstance(c, Connection):
            raise UsageError("no host: name one or more with fab -H HOST[,HOST...]")
        with Session(config) as session:
            user = c.user if c.user != c.ssh_config.get("user", c.config.user) else None
            yield session, session.host(c.host, user=user)  # fab -H [user@]id-or-address
    except SkeletonError as exc:
        raise Exit(f"skeleton: error: {exc}", code=exc.exit_code) from None
    except KeyboardInterrupt:
        raise Exit("skeleton: interrupted", code=130) from None


def _seconds(value: str, flag: str) -> float:
    """Seconds typed on the command line (Invoke's float conversion would print a traceback
    for `2s`); 0 means the configured default."""
    if not value.replace(".", "", 1).isdigit():
        raise UsageError(f"{flag}: expected a number of seconds, got {value!r}")
    return float(value)


def _finish(done: Done[Any]) -> None:
    """Stop fab with the contract's code when the host failed (the application command
    journaled the run, as for the CLI and `inv`)."""
    if done.exit_code:
        raise Exit(code=done.exit_code)


def _command(c: Connection, command: str | None, timeout: str, config: str | None) -> None:
    with _target(c, config) as (session, node):
        if not command:
            raise UsageError("--command is required")
        done = commands.exec_command(session, [node], command,
                                     timeout=_seconds(timeout, "--timeout") or None)
        exec_text(done.result, sys.stdout)
    _finish(done)


@task(help={"config": _CONFIG})
def uptime(c: Connection, config: str | None = None) -> None:
    """Print the host's uptime and load."""
    _command(c, "uptime", "0", config)


@task(help={"command": "The shell command to run, exactly as typed (required).",
            "timeout": "(SECONDS) Kill the command on the host after this long (default 0:"
                       " ssh.command_timeout).", "config": _CONFIG})
def run(c: Connection, command: str | None = None, timeout: str = "0",
        config: str | None = None) -> None:
    """Run a shell command on the host."""
    _command(c, command, timeout, config)


@task(help={"json": _JSON, "config": _CONFIG})
def status(c: Connection, json: bool = False, config: str | None = None) -> None:
    """Daemon, load, memory, GPU and disk of the host (one round trip)."""
    with _target(c, config) as (session, node):
        done = commands.status(session, [node])
        result, registry_rows = done.result, done.registry_rows
        if json:
            print(status_view.status_json(result, registry_rows))
        else:
            status_view.status_text(result, [node], registry_rows,
                                    session.settings.registry.stale_after)
    _finish(done)


@task(help={"source": "Local tree to push (default deploy.source).",
            "dest": "Destination on the host (default: its app dir).",
            "delete": "Remove files the source no longer has (default deploy.delete).",
            "no_delete": "Never remove files on the host, whatever deploy.delete says.",
            "dry_run": "List what would change; change nothing.",
            "checksum": "Compare file contents, not size and time.",
            "force": "Run rsync even when the host's digest says it is up to date.",
            "restart": "Stop the daemon, deploy, start it.", "json": _JSON,
            "config": _CONFIG})
def deploy(c: Connection, source: str | None = None, dest: str | None = None,
           delete: bool = False, no_delete: bool = False, dry_run: bool = False,
           checksum: bool = False, force: bool = False, restart: bool = False,
           json: bool = False, config: str | None = None) -> None:
    """Push the code tree to the host with rsync."""
    with _target(c, config) as (session, node):
        started = time.monotonic()
        done = commands.deploy(session, [node], source=source, dest=dest,
                               delete=True if delete else False if no_delete else None,
                               dry_run=dry_run, checksum=checksum, force=force,
                               restart=restart)
        result = done.result
        if json:
            print(result.to_json())
        else:
            deploy_text(result, sys.stdout, list_changes=dry_run, started=started)
    _finish(done)


@task(help={"to": "(ID) Switch to this release (default: the one before the current one).",
            "restart": "Restart the daemon after the switch.", "json": _JSON,
            "config": _CONFIG})
def rollback(c: Connection, to: str | None = None, restart: bool = False, json: bool = False,
             config: str | None = None) -> None:
    """deploy.strategy releases: point the host's `current` back at the previous release."""
    from skeleton_app.app.views.releases import rollback_text

    with _target(c, config) as (session, node):
        done = commands.rollback(session, [node], to=to, restart=restart)
        if json:
            print(done.result.to_json())
        else:
            rollback_text(done.result, sys.stdout)
    _finish(done)


@task(help={"action": "start, stop, restart or status (required).",
            "wait_healthy": "start/restart: wait for the host's /health to answer from the"
                            " new daemon.",
            "health_timeout": "(SECONDS) How long the host may take to answer /health"
                              " (default 30).", "json": _JSON, "config": _CONFIG})
def daemon(c: Connection, action: str | None = None, wait_healthy: bool = False,
           health_timeout: str = "30", json: bool = False,
           config: str | None = None) -> None:
    """Start, stop, restart or check the node daemon on the host."""
    with _target(c, config) as (session, node):
        if not action:
            raise UsageError("--action is required")
        done = commands.daemon(session, [node], action, wait_healthy=wait_healthy,
                               health_timeout=_seconds(health_timeout, "--health-timeout"))
        result = done.result
        if json:
            print(result.to_json())
        else:
            daemon_text(result, [node], sys.stdout)
    _finish(done)
