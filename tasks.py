"""Invoke tasks: the `skeleton cluster` operations for people who use `inv`.

    inv status                                    inv deploy --node linux-05
    inv exec --command "uptime" --node linux-01   inv daemon --action restart --node linux-02
    inv exec --node linux-01 -- uname -r          inv exec --sudo --command "id -u"
    inv sync-models --source-node linux-01        inv logs --lines 500
    inv bootstrap --node linux-05                 inv rollback --to ID     inv releases
    inv copy --local app.conf --remote-dir /etc/app --node linux-01 --mode 0640
    inv fetch --remote /var/log/app --local-dir got     (got/<node>/app/...)
    inv jobs-submit --engine stt --input a.wav --wait   inv jobs-list --state failed
    inv jobs-show --job 12     inv jobs-cancel --job 12     inv jobs-retry --job 12
    inv jobs-dispatch
    inv jack-status     inv jack-start --node linux-01     inv jack-stop
    inv jack-connect --node linux-01 --port-a system:capture_1 --port-b system:playback_1
    inv jack-disconnect --node linux-01 --port-a system:capture_1 --port-b system:playback_1
    inv jack-link --hub linux-01 --client linux-02    inv jack-mesh
    inv jack-unlink --hub linux-01 --client linux-02

Thin: every task selects nodes, calls the same application command as `skeleton cluster ...`
(`skeleton_app.app.commands`: it runs the operation and journals the run in the registry),
renders with the same views (`skeleton_app.app.views`) and exits with the same code (the
contract in `skeleton_app.app.cli`: 0 ok, 1 some node failed, 2 usage, 3 registry,
4 unreachable). A `SkeletonError` becomes one line on stderr and its exit code,
as in `cli.main`. `--node`, `--role` and `--exclude` are repeatable and comma-separated.
Invoke's own parser rejects unknown flags with its exit code 1. The `jobs-*` tasks are
`skeleton jobs ...` (no node selection: the dispatcher routes each job).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from invoke import Context, Exit, Task
from invoke import task as _invoke_task

from skeleton_app.app import commands
from skeleton_app.app.commands import Done, Selection, Session
from skeleton_app.app.jobs_submit import JobsRequest
from skeleton_app.app.views import common as render
from skeleton_app.app.views import jobs as jobs_view
from skeleton_app.app.views import status as status_view
from skeleton_app.app.views.bootstrap import bootstrap_text, failures
from skeleton_app.app.views.copy import TransferProgress, copy_text, fetch_text, skipped_lines
from skeleton_app.app.views.daemon import daemon_text
from skeleton_app.app.views.deploy import DeployProgress, deploy_text
from skeleton_app.app.views.exec import exec_view
from skeleton_app.app.views.jack_server import connect_text, server_text
from skeleton_app.app.views.logs import logs_text
from skeleton_app.app.views.sync_models import SyncModelsProgress, summary_rows
from skeleton_app.errors import SkeletonError, UsageError
from skeleton_app.nodes import Node
from skeleton_app.ops import logs as logs_op


class _Task(Task):  # type: ignore[misc]  (Invoke has no type hints)
    """Invoke's Task, without a short flag for `--list-hosts`: Invoke gives each option the
    first free character of its name, which for list-hosts (after -l, -i, -s, -t) was "-"."""

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, Any]:
        opts: dict[str, Any] = super().arg_opts(name, default, taken_names)
        if name == "list_hosts":
            opts["names"] = opts["names"][:1]
        return opts


def task(*args: Any, **kwargs: Any) -> Any:
    return _invoke_task(*args, klass=_Task, **kwargs)


_SELECTION = ["node", "role", "exclude"]
_HELP = {
    "config": "Config file (default $SKELETON_CONFIG, else ./config.yaml).",
    "node": "(SPEC, repeatable) Nodes: ids, ranges (linux-[01-03]), globs (linux-*),"
            " addresses, @GROUP or @ROLE, comma-separated (default: every node).",
    "role": "(ROLE, repeatable) Only nodes with this role.",
    "exclude": "(SPEC, repeatable) Leave these nodes out.",
    "fanout": "(N) At most this many nodes in flight (default ssh.fanout).",
    "json": "Print the whole result as JSON.",
    "list_hosts": "Print the selected nodes, one per line, and run nothing.",
}


# ---------------------------------------------------------------- the front end's plumbing


@contextmanager
def _session(config: str | None, fanout: str | None) -> Iterator[Session]:
    """The application session for one task (`--fanout` overrides ssh.fanout). A
    SkeletonError becomes one line and its exit code, Ctrl-C exit 130 (as in cli.main)."""
    try:
        with Session(config, fanout=_count(fanout, "--fanout")) as session:
            yield session
    except SkeletonError as exc:
        raise Exit(f"skeleton: error: {exc}", code=exc.exit_code) from None
    except KeyboardInterrupt:
        raise Exit("skeleton: interrupted", code=130) from None


def _select(session: Session, node: Sequence[str] | None, role: Sequence[str] | None,
            exclude: Sequence[str] | None, list_hosts: bool = False, *,
            listed: Callable[[tuple[Node, ...]], Sequence[Node]] | None = None
            ) -> tuple[Node, ...]:
    """The selected nodes; with `list_hosts` (`pdsh -q`, `ansible --list-hosts`) print them
    (or those `listed` picks: the ones a command writes to) and exit 0, nothing run."""
    # Every value as typed (an empty `--node ''` is an error in select, never dropped).
    nodes = session.select(Selection(node or (), role or (), exclude or ()))
    if list_hosts:
        for n in listed(nodes) if listed is not None else nodes:
            print(n.id)
        raise Exit(code=0)
    return nodes


def _required(value: str | None, flag: str) -> str:
    if not value:
        raise UsageError(f"{flag} is required")
    return value


def _seconds(value: str | None, flag: str, *, zero: bool = False) -> float | None:
    """Seconds typed on the command line (None when not given). Invoke's own int/float
    conversion would print a traceback for `2s`: we parse, and say what was wrong."""
    if value is None:
        return None
    number = float(value) if value.replace(".", "", 1).isdigit() else -1.0  # no inf, nan
    if number < 0 or (number == 0 and not zero):
        raise UsageError(f"{flag}: expected a number of seconds{'' if zero else ' > 0'},"
                         f" got {value!r}")
    return number


def _count(value: str | None, flag: str) -> int | None:
    """A whole number >= 1 typed on the command line (None when not given)."""
    if value is None:
        return None
    if not value.strip().isdigit() or int(value) < 1:
        raise UsageError(f"{flag}: expected a whole number >= 1, got {value!r}")
    return int(value)


def _finish(done: Done[Any]) -> NoReturn:
    """Exit with the contract's code (the application command journaled the run)."""
    raise Exit(code=done.exit_code)


# ---------------------------------------------------------------- tasks


@task(iterable=_SELECTION, help={
    **_HELP, "command": "The shell command to run, exactly as typed (or the words after"
                        " `--`, joined with spaces: inv exec -n linux-01 -- uname -r).",
    "timeout": "(SECONDS) Kill the command on the node after this long (default"
               " ssh.command_timeout; unset: no timeout).",
    "stream": "Print lines live as 'node: line'.",
    "out_dir": "Write every node's full stdout/stderr to DIR/<node>.out and .err.",
    "stdin": "Send this command's stdin (at most 64 MiB) to every node.",
    "sudo": "Run the command under sudo (password asked once if a node needs one, or"
            " $SKELETON_SUDO_PASSWORD_FILE).",
    "sudo_user": "(USER) With --sudo: run as USER (default root)."})
# sudo_user before sudo: Invoke then gives it -u (the other way round, its short flag is `--`).
def exec(c: Context, command: str | None = None, node: list[str] | None = None,
         role: list[str] | None = None, exclude: list[str] | None = None,
         timeout: str | None = None, stream: bool = False, json: bool = False,
         out_dir: str | None = None, fanout: str | None = None,
         config: str | None = None, stdin: bool = False, sudo_user: str | None = None,
         sudo: bool = False, list_hosts: bool = False) -> None:
    """Run a shell command on every selected node, in parallel."""
    from skeleton_app.app.exec_input import join_words, read_stdin, sudo_password_source
    from skeleton_app.ops.sudo import SudoRequest

    with _session(config, fanout) as session:
        if command is None and "--" in sys.argv:  # Invoke keeps what follows `--` aside
            command = join_words(sys.argv[sys.argv.index("--") + 1:])
        nodes = _select(session, node, role, exclude, list_hosts)  # listing needs no command
        command = _required(command, "--command")
        if sudo_user is not None and not sudo:
            raise UsageError("--sudo-user needs --sudo")
        request = SudoRequest(sudo_password_source(), sudo_user) if sudo else None
        done = commands.exec_command(
            session, nodes, command, timeout=_seconds(timeout, "--timeout"), out_dir=out_dir,
            on_line=(lambda n, s, line: render.stream_line(sys.stdout, n, s, line))
            if stream and not json else None,
            stdin=read_stdin() if stdin else None, sudo=request)
        result = done.result
        if json:
            print(result.to_json())
        elif stream:
            render.error_lines(result, sys.stdout)
        else:
            exec_view(result, sys.stdout)
        _finish(done)


@task(iterable=_SELECTION, help=_HELP)
def status(c: Context, node: list[str] | None = None, role: list[str] | None = None,
           exclude: list[str] | None = None, json: bool = False, fanout: str | None = None,
           config: str | None = None, list_hosts: bool = False) -> None:
    """Daemon, load, memory, GPU and disk of every selected node (one round trip each)."""
    with _session(config, fanout) as session:
        nodes = _select(session, node, role, exclude, list_hosts)
        done = commands.status(session, nodes)
        result, registry_rows = done.result, done.registry_rows
        if json:
            print(status_view.status_json(result, registry_rows))
        else:
            status_view.status_text(result, nodes, registry_rows,
                                    session.settings.registry.stale_after)
        _finish(done)


@task(iterable=_SELECTION, help={
    **_HELP, "source": "Local tree to push (default deploy.source).",
    "dest": "Destination on every node (default: the node's app dir).",
    "delete": "Remove files the source no longer has (default deploy.delete); excluded paths"
              " (.venv/, logs/, ...) are never removed.",
    "no_delete": "Never remove files on the nodes, whatever deploy.delete says.",
    "dry_run": "List per node what would change; change nothing.",
    "diff": "Show per node the diff of each file that would change (implies --dry-run).",
    "checksum": "Compare file contents, not size and time.",
    "force": "Run rsync even when the node's digest says it is up to date.",
    "restart": "Per node: stop the daemon, deploy, start it.",
    "lock_wait": "(SECONDS) How long to wait for another deploy's lock on a node"
                 " (default 10)."})
def deploy(c: Context, node: list[str] | None = None, role: list[str] | None = None,
           exclude: list[str] | None = None, source: str | None = None,
           dest: str | None = None, delete: bool = False, no_delete: bool = False,
           dry_run: bool = False, checksum: bool = False, force: bool = False,
           restart: bool = False, lock_wait: str = "10", json: bool = False,
           fanout: str | None = None, config: str | None = None, diff: bool = False,
           list_hosts: bool = False) -> None:
    """Push the code tree to every selected node with rsync, in parallel."""
    with _session(config, fanout) as session:
        nodes = _select(session, node, role, exclude, list_hosts)
        started = time.monotonic()
        done = commands.deploy(
            session, nodes, source=source, dest=dest,
            delete=True if delete else False if no_delete else None,  # None: deploy.delete
            dry_run=dry_run, checksum=checksum, force=force, restart=restart,
            lock_wait=_seconds(lock_wait, "--lock-wait", zero=True) or 0.0,
            progress=None if json else DeployProgress(nodes), diff=diff)
        result = done.result
        if json:
            print(result.to_json())
        else:
            deploy_text(result, sys.stdout, list_changes=dry_run or diff, started=started)
        _finish(done)


@task(iterable=_SELECTION, help={
    **_HELP, "to": "(ID) Switch to this release (default: the one before the current one).",
    "restart": "Per node: restart the daemon after the switch."})
def rollback(c: Context, node: list[str] | None = None, role: list[str] | None = None,
             exclude: list[str] | None = None, to: str | None = None, restart: bool = False,
             json: bool = False, fanout: str | None = None, config: str | None = None,
             list_hosts: bool = False) -> None:
    """deploy.strategy releases: point `current` back at the previous release (or --to)."""
    from skeleton_app.app.views.releases import rollback_text

    with _session(config, fanout) as session:
        nodes = _select(session, node, role, exclude, list_hosts)
        done = commands.rollback(session, nodes, to=to, restart=restart)
        if json:
            print(done.result.to_json())
        else:
            rollback_text(done.result, sys.stdout)
        _finish(done)


@task(iterable=_SELECTION, help=_HELP)
def releases(c: Context, node: list[str] | None = None, role: list[str] | None = None,
             exclude: list[str] | None = None, json: bool = False, fanout: str | None = None,
             config: str | None = None, list_hosts: bool = False) -> None:
    """deploy.strategy releases: each node's releases, newest first (* marks current)."""
    from skeleton_app.app.views.releases import releases_text

    with _session(config, fanout) as session:
        nodes = _select(session, node, role, exclude, list_hosts)
        done = commands.releases(session, nodes)
        if json:
            print(done.result.to_json())
        else:
            releases_text(done.result, sys.stdout)
        _finish(done)


@task(iterable=_SELECTION, help={
    **_HELP, "source": "The project to install (default deploy.source).",
    "wheelhouse": "(DIR) Build from these pre-built wheels only, no index (default"
                  " bootstrap.wheelhouse).",
    "force": "Install even where the node is up to date."})
def bootstrap(c: Context, node: list[str] | None = None, role: list[str] | None = None,
              exclude: list[str] | None = None, source: str | None = None,
              wheelhouse: str | None = None, force: bool = False, json: bool = False,
              fanout: str | None = None, config: str | None = None,
              list_hosts: bool = False) -> None:
    """Make each node's app dir .venv (project and dependencies, from wheels built here)."""
    with _session(config, fanout) as session:
        nodes = _select(session, node, role, exclude, list_hosts)
        done = commands.bootstrap(session, nodes, source=source, wheelhouse=wheelhouse,
                                  force=force)
        result = done.result
        if json:
            print(result.to_json())
        else:
            bootstrap_text(result)
            for line in failures(result):
                print(f"skeleton: {render.sanitize(line)}", file=sys.stderr)
        _finish(done)


@task(iterable=_SELECTION, help={
    **_HELP, "action": "start, stop, restart or status (required).",
    "batch": "(K) restart: K nodes at a time; stop at the first that fails (default: all at"
             " once).",
    "wait_healthy": "start/restart: wait for each node's /health to answer from the new"
                    " daemon.",
    "health_timeout": "(SECONDS) How long each node may take to answer /health"
                      " (default 30)."})
def daemon(c: Context, action: str | None = None, node: list[str] | None = None,
           role: list[str] | None = None, exclude: list[str] | None = None,
           batch: str | None = None, wait_healthy: bool = False,
           health_timeout: str = "30", json: bool = False, fanout: str | None = None,
           config: str | None = None, list_hosts: bool = False) -> None:
    """Start, stop, restart or check the node daemon (daemon.manager: process or systemd)."""
    with _session(config, fanout) as session:
        action = _required(action, "--action")
        nodes = _select(session, node, role, exclude, list_hosts)
        done = commands.daemon(
            session, nodes, action, batch=_count(batch, "--batch"), wait_healthy=wait_healthy,
            health_timeout=_seconds(health_timeout, "--health-timeout") or 30.0)
        result = done.result
        if json:
            print(result.to_json())
        else:
            daemon_text(result, nodes, sys.stdout)
        _finish(done)


@task(iterable=[*_SELECTION, "target_node"], help={
    **_HELP, "source_node": "The node that holds the model: id or address (required).",
    "target_node": "(SPEC, repeatable) Targets: ids, ranges, globs, like --node (default:"
                   " every other selected node).",
    "models_path": "Models directory on every node (default app.models_dir); relative:"
                   " under each node's app dir.",
    "model": "One model, an entry of the models directory (default: all of them).",
    "verify": "Re-hash every file on the targets: finds and repairs corrupted copies.",
    "relay": "Stream through this machine, for nodes that cannot reach each other.",
    "streams_per_sender": "(N) At most this many streams from one sending node (default"
                          " 4)."})
def sync_models(c: Context, source_node: str | None = None,
                target_node: list[str] | None = None, node: list[str] | None = None,
                role: list[str] | None = None, exclude: list[str] | None = None,
                models_path: str | None = None, model: str | None = None,
                verify: bool = False, relay: bool = False, streams_per_sender: str = "4",
                json: bool = False, fanout: str | None = None,
                config: str | None = None, list_hosts: bool = False) -> None:
    """Copy a model from the node that has it to the others, node to node."""
    with _session(config, fanout) as session:
        source_id = _required(source_node, "--source-node")
        source = session.cluster().node(source_id)
        chosen = _select(session, [*(node or []), *(target_node or [])], role, exclude,
                         list_hosts, listed=lambda ns: [n for n in ns if n.id != source.id])
        done = commands.sync_models(
            session, chosen, source_id, models_path=models_path, model=model, verify=verify,
            relay=relay, progress=SyncModelsProgress(enabled=not json),
            streams_per_sender=_count(streams_per_sender, "--streams-per-sender") or 4)
        result, source = done.result, done.source
        if json:
            print(result.to_json())
        else:
            render.table(f"sync-models from {source.id}",
                         ["node", "status", "moved", "time", "rate", "how / why"],
                         summary_rows(result))
            for warning in result.warnings:
                print(f"skeleton: warning: {render.sanitize(warning)}", file=sys.stderr)
        _finish(done)


@task(iterable=_SELECTION, help={
    **_HELP, "lines": "The last N lines of each source (default logs.lines).",
    "since": "Only lines since WHEN: 30s, 15m, 2h, 1d, 1h30m or an ISO date/time.",
    "grep": "Only lines matching PATTERN (grep -E), filtered on the node.",
    "follow": "Stream new lines from every node as 'node: line' until Ctrl-C.",
    "out": "Write DIR/<node>.log and DIR/merged.log (default collected_logs).",
    "max_bytes": "At most SIZE of log per node, its newest bytes (default 16M).",
    "max_line": "Lines longer than SIZE are cut to their first SIZE bytes (default 64K)."})
def logs(c: Context, node: list[str] | None = None, role: list[str] | None = None,
         exclude: list[str] | None = None, lines: str | None = None,
         since: str | None = None, grep: str | None = None, follow: bool = False,
         out: str = logs_op.DEFAULT_OUT_DIR, max_bytes: str = "16M", max_line: str = "64K",
         json: bool = False, fanout: str | None = None, config: str | None = None,
         list_hosts: bool = False) -> None:
    """Gather the daemon log, the logs.files globs and (systemd) the journal of every node."""
    with _session(config, fanout) as session:
        query = commands.LogsQuery.parse(lines=lines, since=since, grep=grep,
                                         max_bytes=max_bytes, max_line=max_line)
        nodes = _select(session, node, role, exclude, list_hosts)
        printer = render.NodeLines()
        done = commands.logs(session, nodes, query, out_dir=out, follow=follow,
                             on_line=printer.line, on_error=printer.error)
        result = done.result
        if json:
            print(result.to_json())
        elif not follow:
            logs_text(result, sys.stdout, out_dir=out)
        _finish(done)


@task(iterable=[*_SELECTION, "local"], help={
    **_HELP, "local": "(PATH, repeatable) A local file or directory to copy (required).",
    "remote_dir": "(DIR) Where on every node: absolute or ~/... (required; made if missing).",
    "mode": "(MODE) Octal mode of every copied file, e.g. 0640 (directories keep theirs).",
    "preserve": "Keep each file's mode and modification time (else: like cp)."})
def copy(c: Context, local: list[str] | None = None, remote_dir: str | None = None,
         mode: str | None = None, preserve: bool = False, node: list[str] | None = None,
         role: list[str] | None = None, exclude: list[str] | None = None, json: bool = False,
         fanout: str | None = None, config: str | None = None, list_hosts: bool = False) -> None:
    """Copy local files and directories into a directory on every selected node."""
    with _session(config, fanout) as session:
        request = commands.CopyRequest.parse(local or (), _required(remote_dir, "--remote-dir"),
                                             mode=mode, preserve=preserve)
        nodes = _select(session, node, role, exclude, list_hosts)
        done = commands.copy(session, nodes, request,
                             progress=TransferProgress(nodes, enabled=not json))
        if json:
            print(done.result.to_json())
        else:
            copy_text(done.result, sys.stdout)
        _finish(done)


@task(iterable=[*_SELECTION, "remote"], help={
    **_HELP, "remote": "(PATH, repeatable) A file or directory on the nodes: absolute or ~/..."
                       " (required).",
    "local_dir": "(DIR) Write LOCAL_DIR/<node>/... (required).",
    "max_bytes": "(SIZE) At most this much file data from each node (default 4G)."})
def fetch(c: Context, remote: list[str] | None = None, local_dir: str | None = None,
          node: list[str] | None = None, role: list[str] | None = None,
          exclude: list[str] | None = None, json: bool = False, fanout: str | None = None,
          max_bytes: str = "4G", config: str | None = None, list_hosts: bool = False) -> None:
    """Fetch files and directories from every selected node into LOCAL_DIR/<node>/."""
    with _session(config, fanout) as session:
        request = commands.FetchRequest.parse(remote or (),
                                              _required(local_dir, "--local-dir"),
                                              max_bytes=max_bytes)
        nodes = _select(session, node, role, exclude, list_hosts)
        done = commands.fetch(session, nodes, request,
                              progress=TransferProgress(nodes, enabled=not json))
        if json:
            print(done.result.to_json())
        else:
            fetch_text(done.result, sys.stdout, local_dir=request.local_dir)
            for line in skipped_lines(done.result):
                print(f"skeleton: warning: {line}", file=sys.stderr)
        _finish(done)


# ---------------------------------------------------------------- voice jobs (#14)
# The same application commands and views as `skeleton jobs ...`; no node selection: the
# dispatcher routes each job to the best node.

_JOB_HELP = {"config": _HELP["config"], "job": "(JOB) The job's id (required).",
             "json": _HELP["json"]}


def _job(job: str | None) -> int:
    return _count(_required(job, "--job"), "--job") or 0


@task(iterable=["input"], help={
    "config": _HELP["config"], "json": _HELP["json"],
    "engine": "stt, tts, another engine of config.yaml, or run (required).",
    "input": "(FILE, repeatable) Input files, one job each (run: one).",
    "text": "The text (an engine whose input is text, such as tts).",
    "command": "run: the command, e.g. 'my-tool {input} > {output}'.",
    "role": "run: the role of the nodes that may run it.",
    "output": "run: the output file's name, {output} in the command.",
    "out": "(PATH) Write each output here as its job ends (implies --wait): a file, or a"
           " directory (<input stem><suffix> per job).",
    "wait": "Wait for the jobs (without a running dispatcher, one runs in this process).",
    "timeout": "(SECONDS) With --wait: stop waiting after this long (the jobs go on).",
    "cancel_on_interrupt": "With --wait: Ctrl-C cancels the jobs (default: they go on)."})
def jobs_submit(c: Context, engine: str | None = None, input: list[str] | None = None,
                text: str | None = None, command: str | None = None, role: str | None = None,
                output: str | None = None, out: str | None = None, wait: bool = False,
                timeout: str | None = None, cancel_on_interrupt: bool = False,
                json: bool = False, config: str | None = None) -> None:
    """Queue voice jobs (one per input file); --wait prints or writes their outputs."""
    with _session(config, None) as session:
        request = JobsRequest.from_flags(
            session.settings, engine, inputs=input or (), text=text, command=command,
            role=role, output_name=output, out=out, wait=wait,
            timeout=_seconds(timeout, "--timeout"), cancel_on_interrupt=cancel_on_interrupt)
        printer = jobs_view.ResultPrinter(sys.stdout, sys.stderr,
                                          several=len(request.inputs) > 1)
        done = commands.jobs_submit(session, request, on_result=None if json else printer)
        if json:
            print(jobs_view.submit_json(done, prints=request.prints))
        elif not done.waited:
            print("\n".join(jobs_view.queued_lines(done)))
        for line in jobs_view.left_lines(done):
            print(line, file=sys.stderr)
        raise Exit(code=done.exit_code)


@task(iterable=["state"], help={
    "config": _HELP["config"], "json": _HELP["json"],
    "state": "(STATE, repeatable) Only jobs in this state: queued, running, done, failed,"
             " cancelled.",
    "limit": "(N) At most this many jobs, newest first (default 100)."})
def jobs_list(c: Context, state: list[str] | None = None, limit: str = "100",
              json: bool = False, config: str | None = None) -> None:
    """The newest voice jobs: state, node, attempts, times."""
    with _session(config, None) as session:
        found = commands.jobs_list(session, states=state or (),
                                   limit=_count(limit, "--limit") or 100)
        if json:
            print(jobs_view.list_json(found))
        else:
            jobs_view.jobs_table(found, sys.stdout)


@task(help=_JOB_HELP)
def jobs_show(c: Context, job: str | None = None, json: bool = False,
              config: str | None = None) -> None:
    """One voice job and every attempt: node, why that node, start/end, exit, stderr."""
    with _session(config, None) as session:
        detail = commands.jobs_show(session, _job(job))
        if json:
            print(jobs_view.show_json(detail))
        else:
            jobs_view.show_text(detail, sys.stdout)


@task(help={"config": _HELP["config"], "job": _JOB_HELP["job"]})
def jobs_cancel(c: Context, job: str | None = None, config: str | None = None) -> None:
    """Cancel a voice job: a queued one at once, a running one is killed on its node."""
    with _session(config, None) as session:
        print(jobs_view.cancel_line(commands.jobs_cancel(session, _job(job))))


@task(help={"config": _HELP["config"], "job": _JOB_HELP["job"]})
def jobs_retry(c: Context, job: str | None = None, config: str | None = None) -> None:
    """Queue a failed or cancelled voice job again."""
    with _session(config, None) as session:
        print(f"job {commands.jobs_retry(session, _job(job)).id} queued again")


@task(help={"config": _HELP["config"]})
def jobs_dispatch(c: Context, config: str | None = None) -> None:
    """Run voice jobs until Ctrl-C: route each to the best node, fail over."""
    with _session(config, None) as session:
        outcome = commands.jobs_dispatch(
            session, on_event=lambda line: print(render.sanitize(line), flush=True))
        print(jobs_view.dispatch_summary(outcome), file=sys.stderr)


# ---------------------------------------------------------------- skeleton jack (servers)


def _jack(config: str | None, fanout: str | None, action: str, node: list[str] | None,
          role: list[str] | None, exclude: list[str] | None, json: bool,
          list_hosts: bool) -> None:
    with _session(config, fanout) as session:
        nodes = _select(session, node, role, exclude, list_hosts)
        done = commands.jack_server(session, nodes, action)
        if json:
            print(done.result.to_json())
        else:
            server_text(done.result, nodes, sys.stdout)
        _finish(done)


def _ports(config: str | None, node: str | None, a: str | None, b: str | None, json: bool,
           disconnect: bool) -> None:
    with _session(config, None) as session:
        done = commands.jack_connect(session, _required(node, "--node"),
                                     _required(a, "--port-a"), _required(b, "--port-b"),
                                     disconnect=disconnect)
        if json:
            print(done.result.to_json())
        else:
            connect_text(done.result, sys.stdout, sys.stderr)
        _finish(done)


_PORTS_HELP = {"config": _HELP["config"], "node": "(NODE) The node (required).",
               "port_a": "(PORT) A port as `jack-status` lists it (required).",
               "port_b": "(PORT) The other port (required).", "json": _HELP["json"]}


@task(iterable=_SELECTION, help=_HELP)
def jack_status(c: Context, node: list[str] | None = None, role: list[str] | None = None,
                exclude: list[str] | None = None, json: bool = False,
                fanout: str | None = None, config: str | None = None,
                list_hosts: bool = False) -> None:
    """Each node's JACK server: up, sample rate, period, xruns, ports and connections."""
    _jack(config, fanout, "status", node, role, exclude, json, list_hosts)


@task(iterable=_SELECTION, help=_HELP)
def jack_start(c: Context, node: list[str] | None = None, role: list[str] | None = None,
               exclude: list[str] | None = None, json: bool = False,
               fanout: str | None = None, config: str | None = None,
               list_hosts: bool = False) -> None:
    """Start jackd with each node's configured driver (a running server is left alone)."""
    _jack(config, fanout, "start", node, role, exclude, json, list_hosts)


@task(iterable=_SELECTION, help=_HELP)
def jack_stop(c: Context, node: list[str] | None = None, role: list[str] | None = None,
              exclude: list[str] | None = None, json: bool = False,
              fanout: str | None = None, config: str | None = None,
              list_hosts: bool = False) -> None:
    """Stop the jackd that jack-start started (SIGTERM, then SIGKILL)."""
    _jack(config, fanout, "stop", node, role, exclude, json, list_hosts)


@task(help=_PORTS_HELP)
def jack_connect(c: Context, node: str | None = None, port_a: str | None = None,
                 port_b: str | None = None, json: bool = False,
                 config: str | None = None) -> None:
    """Connect two JACK ports on one node (already connected is success)."""
    _ports(config, node, port_a, port_b, json, disconnect=False)


@task(help=_PORTS_HELP)
def jack_disconnect(c: Context, node: str | None = None, port_a: str | None = None,
                    port_b: str | None = None, json: bool = False,
                    config: str | None = None) -> None:
    """Disconnect two JACK ports on one node (not connected is success)."""
    _ports(config, node, port_a, port_b, json, disconnect=True)
# ---------------------------------------------------------------- JackTrip links (#17)

_LINK_HELP = {"config": _HELP["config"], "json": _HELP["json"],
              "hub": "(NODE) The node of JackTrip's hub server.",
              "client": "(NODE) The node of its client.",
              "channels": "(N) Audio channels each way (default jack.channels).",
              "port_offset": "(N) Port = jack.udp_base_port + N (default: the first free)."}


@task(help=_LINK_HELP)
def jack_link(c: Context, hub: str | None = None, client: str | None = None,
              channels: str | None = None, port_offset: str | None = None,
              json: bool = False, config: str | None = None) -> None:
    """A JackTrip link: hub server on --hub, client on --client (restored when down)."""
    from skeleton_app.app.views import jack_links as view

    with _session(config, None) as session:
        if port_offset is not None and not port_offset.strip().isdigit():
            raise UsageError(f"--port-offset: expected a whole number >= 0, got {port_offset!r}")
        offset = None if port_offset is None else int(port_offset)
        done = commands.jack_link(session, _required(hub, "--hub"),
                                  _required(client, "--client"),
                                  channels=_count(channels, "--channels"), port_offset=offset)
        print(view.link_json(done.result)) if json else view.link_text(done.result)
        _finish(done)


@task(help={k: v for k, v in _LINK_HELP.items() if k not in ("channels", "port_offset")})
def jack_unlink(c: Context, hub: str | None = None, client: str | None = None,
                json: bool = False, config: str | None = None) -> None:
    """Stop both ends of the JackTrip link between --hub and --client, forget it."""
    from skeleton_app.app.views import jack_links as view

    with _session(config, None) as session:
        done = commands.jack_unlink(session, _required(hub, "--hub"),
                                    _required(client, "--client"))
        print(view.link_json(done.result)) if json else view.link_text(done.result)
        _finish(done)


@task(iterable=_SELECTION, help=_HELP)
def jack_mesh(c: Context, node: list[str] | None = None, role: list[str] | None = None,
              exclude: list[str] | None = None, json: bool = False,
              fanout: str | None = None, config: str | None = None,
              list_hosts: bool = False) -> None:
    """Every JackTrip link: ends, channels, state, queue; exit 1 when one is not up."""
    from skeleton_app.app.views import jack_links as view

    with _session(config, fanout) as session:
        mesh = commands.jack_mesh(session, _select(session, node, role, exclude, list_hosts))
        print(view.mesh_json(mesh)) if json else view.mesh_text(mesh)
        code = mesh.result.exit_code()
        raise Exit(code=code or int(any(s.state != "up" for s in mesh.links)))
