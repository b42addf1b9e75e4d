"""Fabric tasks for people who use `fab`: per-host operations on the hosts given with -H.

    fab -H linux-01,linux-02 deploy              fab -H linux-01 uptime
    fab -H linux-03 run --command "df -h /"      fab -H linux-02 daemon --action restart
    fab -H linux-03 run --sudo --command "systemctl restart foo"
    fab -H 10.0.0.5 status
    fab -H linux-01 put --local app.conf --remote-dir /etc/app --mode 0640
    fab -H linux-01 get --remote /var/log/app --local-dir got   (got/linux-01/app/...)
    fab -H linux-01 rollback --to ID

-H takes node ids from the configuration (user, port and identity from the node's entry),
ranges of them (`fab -H 'node-[01-03]'`: one run of the task on every node of the range) or
IP addresses (the `ssh` section's settings); `user@host` picks another user than your login
name and `host:port` another port. An unknown name is an error naming the known nodes.
On its own, `fab` builds plain Fabric connections, which would add unknown host keys
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
from skeleton_app.app.fab_hosts import check_all, explicit_ports, fab_nodes
from skeleton_app.app.views import status as status_view
from skeleton_app.app.views.copy import copy_text, fetch_text, skipped_lines
from skeleton_app.app.views.daemon import daemon_text
from skeleton_app.app.views.deploy import deploy_text
from skeleton_app.app.views.exec import exec_view
from skeleton_app.errors import SkeletonError, UsageError
from skeleton_app.nodes import Node, validate_fab_argv

_CONFIG = "Config file (default $SKELETON_CONFIG, else ./config.yaml)."


def _check_hosts() -> list[str]:
    """fab builds a Connection for each `-H` host before any task of ours runs: an empty
    host (`-H ,`) is a traceback there, and `-H @stt` reaches a task as host `stt`. So the
    list is checked as fab loads this file: one clear line, exit 2, nothing runs. Returns
    the elements as typed (each is looked up in the configuration by the first task)."""
    try:
        return validate_fab_argv(sys.argv)
    except SkeletonError as exc:
        print(f"skeleton: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


_HOSTS = _check_hosts()
_PORTS = explicit_ports(_HOSTS)  # (host, port) typed with a port (`-H node-01:2222`)
_JSON = "Print the whole result as JSON."


@contextmanager
def _target(c: Connection, config: str | None) -> Iterator[tuple[Session, tuple[Node, ...]]]:
    """The application session and the nodes that -H named (one, or a range's), with
    skeleton's settings (not fab's connection). A SkeletonError becomes one line and its
    exit code."""
    try:
        if not isinstance(c, Connection):
            raise UsageError("no host: name one or more with fab -H HOST[,HOST...]")
        with Session(config) as session:
            check_all(session, _HOSTS)  # every -H host known before the first one runs
            user = c.user if c.user != c.ssh_config.get("user", c.config.user) else None
            host = c.original_host or c.host  # as typed, not ~/.ssh/config's HostName
            port = c.port if (host, c.port) in _PORTS else None
            # fab -H [user@]id-range-or-address[:port]
            yield session, fab_nodes(session, host, user=user, port=port)
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


# fab runs a task once per -H host, in this one process: what the controller gives once
# (its stdin, the sudo password) is read for the first host and kept for the others. Read
# again, stdin would be empty for every host after the first, and the password asked anew.
_ONCE: dict[str, Any] = {}


def _stdin_once() -> bytes:
    from skeleton_app.app.exec_input import read_stdin

    if "stdin" not in _ONCE:
        _ONCE["stdin"] = read_stdin()
    data: bytes = _ONCE["stdin"]
    return data


def _password_once() -> Any:
    from skeleton_app.app.exec_input import sudo_password_source

    if "password" not in _ONCE:
        _ONCE["password"] = sudo_password_source()  # asks at most once, then remembers
    return _ONCE["password"]


def _command(c: Connection, command: str | None, timeout: str, config: str | None, *,
             stdin: bool = False, sudo: bool = False, sudo_user: str | None = None) -> None:
    from skeleton_app.ops.sudo import SudoRequest

    with _target(c, config) as (session, nodes):
        if not command:
            raise UsageError("--command is required")
        if sudo_user is not None and not sudo:
            raise UsageError("--sudo-user needs --sudo")
        request = SudoRequest(_password_once(), sudo_user) if sudo else None
        done = commands.exec_command(session, nodes, command,
                                     timeout=_seconds(timeout, "--timeout") or None,
                                     stdin=_stdin_once() if stdin else None, sudo=request)
        exec_view(done.result, sys.stdout)
    _finish(done)


@task(help={"config": _CONFIG})
def uptime(c: Connection, config: str | None = None) -> None:
    """Print the host's uptime and load."""
    _command(c, "uptime", "0", config)


@task(help={"command": "The shell command to run, exactly as typed (required).",
            "timeout": "(SECONDS) Kill the command on the host after this long (default 0:"
                       " ssh.command_timeout; unset: no timeout).",
            "stdin": "Send this command's stdin (at most 64 MiB) to the host.",
            "sudo": "Run the command under sudo (password asked once if the host needs one,"
                    " or $SKELETON_SUDO_PASSWORD_FILE).",
            "sudo_user": "(USER) With --sudo: run as USER (default root).",
            "config": _CONFIG})
def run(c: Connection, command: str | None = None, timeout: str = "0",
        config: str | None = None, stdin: bool = False, sudo: bool = False,
        sudo_user: str | None = None) -> None:
    """Run a shell command on the host."""
    _command(c, command, timeout, config, stdin=stdin, sudo=sudo, sudo_user=sudo_user)


@task(help={"json": _JSON, "config": _CONFIG})
def status(c: Connection, json: bool = False, config: str | None = None) -> None:
    """Daemon, load, memory, GPU and disk of the host (one round trip)."""
    with _target(c, config) as (session, nodes):
        done = commands.status(session, nodes)
        result, registry_rows = done.result, done.registry_rows
        if json:
            print(status_view.status_json(result, registry_rows))
        else:
            status_view.status_text(result, nodes, registry_rows,
                                    session.settings.registry.stale_after)
    _finish(done)


@task(help={"source": "Local tree to push (default deploy.source).",
            "dest": "Destination on the host (default: its app dir).",
            "delete": "Remove files the source no longer has (default deploy.delete).",
            "no_delete": "Never remove files on the host, whatever deploy.delete says.",
            "dry_run": "List what would change; change nothing.",
            "diff": "Show the diff of each file that would change (implies --dry-run).",
            "checksum": "Compare file contents, not size and time.",
            "force": "Run rsync even when the host's digest says it is up to date.",
            "restart": "Stop the daemon, deploy, start it.", "json": _JSON,
            "config": _CONFIG})
def deploy(c: Connection, source: str | None = None, dest: str | None = None,
           delete: bool = False, no_delete: bool = False, dry_run: bool = False,
           checksum: bool = False, force: bool = False, restart: bool = False,
           json: bool = False, config: str | None = None, diff: bool = False) -> None:
    """Push the code tree to the host with rsync."""
    with _target(c, config) as (session, nodes):
        started = time.monotonic()
        done = commands.deploy(session, nodes, source=source, dest=dest,
                               delete=True if delete else False if no_delete else None,
                               dry_run=dry_run, checksum=checksum, force=force,
                               restart=restart, diff=diff)
        result = done.result
        if json:
            print(result.to_json())
        else:
            deploy_text(result, sys.stdout, list_changes=dry_run or diff, started=started)
    _finish(done)


@task(help={"to": "(ID) Switch to this release (default: the one before the current one).",
            "restart": "Restart the daemon after the switch.", "json": _JSON,
            "config": _CONFIG})
def rollback(c: Connection, to: str | None = None, restart: bool = False, json: bool = False,
             config: str | None = None) -> None:
    """deploy.strategy releases: point the host's `current` back at the previous release."""
    from skeleton_app.app.views.releases import rollback_text

    with _target(c, config) as (session, nodes):
        done = commands.rollback(session, nodes, to=to, restart=restart)
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
    with _target(c, config) as (session, nodes):
        if not action:
            raise UsageError("--action is required")
        done = commands.daemon(session, nodes, action, wait_healthy=wait_healthy,
                               health_timeout=_seconds(health_timeout, "--health-timeout"))
        result = done.result
        if json:
            print(result.to_json())
        else:
            daemon_text(result, nodes, sys.stdout)
    _finish(done)


@task(iterable=["local"], help={
    "local": "(PATH, repeatable) A local file or directory to copy (required).",
    "remote_dir": "(DIR) Where on the host: absolute or ~/... (required; made if missing).",
    "mode": "(MODE) Octal mode of every copied file, e.g. 0640 (directories keep theirs).",
    "preserve": "Keep each file's mode and modification time (else: like cp).",
    "json": _JSON, "config": _CONFIG})
def put(c: Connection, local: list[str] | None = None, remote_dir: str | None = None,
        mode: str | None = None, preserve: bool = False, json: bool = False,
        config: str | None = None) -> None:
    """Copy local files and directories into a directory on the host (rsync)."""
    with _target(c, config) as (session, nodes):
        if not remote_dir:
            raise UsageError("--remote-dir is required")
        request = commands.CopyRequest.parse(local or (), remote_dir, mode=mode,
                                             preserve=preserve)
        done = commands.copy(session, nodes, request)
        if json:
            print(done.result.to_json())
        else:
            copy_text(done.result, sys.stdout)
    _finish(done)


@task(iterable=["remote"], help={
    "remote": "(PATH, repeatable) A file or directory on the host: absolute or ~/..."
              " (required).",
    "local_dir": "(DIR) Write LOCAL_DIR/<host's node id>/... (required).",
    "max_bytes": "(SIZE) At most this much file data from the host (default 4G).",
    "json": _JSON, "config": _CONFIG})
def get(c: Connection, remote: list[str] | None = None, local_dir: str | None = None,
        max_bytes: str = "4G", json: bool = False, config: str | None = None) -> None:
    """Fetch files and directories from the host into LOCAL_DIR/<node>/ (symlinks skipped)."""
    with _target(c, config) as (session, nodes):
        if not local_dir:
            raise UsageError("--local-dir is required")
        request = commands.FetchRequest.parse(remote or (), local_dir, max_bytes=max_bytes)
        done = commands.fetch(session, nodes, request)
        if json:
            print(done.result.to_json())
        else:
            fetch_text(done.result, sys.stdout, local_dir=local_dir)
            for line in skipped_lines(done.result):
                print(f"skeleton: warning: {line}", file=sys.stderr)
    _finish(done)
