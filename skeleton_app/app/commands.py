"""The application layer: one function per `skeleton cluster` operation, shared by the CLI,
`inv` (tasks.py) and `fab` (fabfile.py).

A front end parses its arguments, opens a `Session` (the settings, the cluster and at most
ONE registry connection for the command's life), selects the nodes, calls one function
here, picks the view for the `Done` it gets back and exits with `Done.exit_code`:

    with Session(config, fanout=fanout) as session:
        nodes = session.select(Selection(node_specs, roles, exclude))
        done = commands.exec_command(session, nodes, "uptime")
        exec_view(done.result, sys.stdout)
    return done.exit_code

Every function runs its operation and journals the run (operation, arguments, selection and
every node's outcome) over the session's registry, so all three front ends journal the same
way. Without a registry configured nothing here imports psycopg (~30 ms); operations are
imported inside their function, so a command pays only for its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic

from skeleton_app.app.progress import LiveProgress, live
from skeleton_app.errors import ExitCode, SkeletonError, UsageError
from skeleton_app.results import ClusterResult, OutcomeT

if TYPE_CHECKING:
    # Imported when first used: `skeleton --help`, `testbed` and `nodes` need none of them.
    from skeleton_app.app.jobs_submit import JobsDone, JobsRequest, ResultFn
    from skeleton_app.app.last_run import PastRun
    from skeleton_app.cluster import Cluster
    from skeleton_app.config import Settings
    from skeleton_app.jack_link_records import LinkStore
    from skeleton_app.nodes import Node
    from skeleton_app.ops.bootstrap import BootstrapOutcome
    from skeleton_app.ops.copy import CopyOutcome, TransferEvent
    from skeleton_app.ops.daemon import DaemonOutcome
    from skeleton_app.ops.deploy import DeployEvent, DeployOutcome
    from skeleton_app.ops.deploy.rollback import ReleasesOutcome, RollbackOutcome
    from skeleton_app.ops.fetch import FetchOutcome
    from skeleton_app.ops.jack.links import LinkEndOutcome, LinkState, Mesh
    from skeleton_app.ops.jack.server import JackConnectOutcome, JackServerOutcome
    from skeleton_app.ops.jobs.dispatcher import DispatchOutcome
    from skeleton_app.ops.jobs.queue import JobDetail, JobResult, Jobs
    from skeleton_app.ops.logs import LineFn
    from skeleton_app.ops.run import LineSink
    from skeleton_app.ops.status import StatusReport
    from skeleton_app.ops.sudo import SudoRequest
    from skeleton_app.ops.sync_models import SyncOutcome, SyncProgress
    from skeleton_app.registry import Registry
    from skeleton_app.registry.job_records import Job, JobEvent
    from skeleton_app.ssh.runner import Runner

Warn = Callable[[str], None]
RegistryOpener = Callable[["Settings"], "Registry"]


def warn_stderr(line: str) -> None:
    """The default `Session.warn`: one line on stderr."""
    print(line, file=sys.stderr)


def _open_registry(settings: Settings) -> Registry:
    from skeleton_app.registry import open_registry  # psycopg only with a registry

    return open_registry(settings)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which nodes, as typed: ids, ranges, globs, addresses, @GROUP/@ROLE (`nodes.select`).
    Every value is kept: an empty `--node ''` (an unset shell variable) is an error in
    select, never dropped (dropping it would widen the run to every node)."""

    nodes: Sequence[str] = ()
    roles: Sequence[str] = ()
    exclude: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Done(Generic[OutcomeT]):
    """What a command hands back: the operation's result and the nodes it ran on."""

    result: ClusterResult[OutcomeT]
    nodes: tuple[Node, ...]

    @property
    def exit_code(self) -> ExitCode:
        return self.result.exit_code()


@dataclass(frozen=True, slots=True)
class StatusDone(Done[OutcomeT]):
    """`status`: also what the registry knows of each node (None without a registry)."""

    registry_rows: Mapping[str, Mapping[str, Any]] | None = None


class Session:
    """One command's settings, cluster and registry connection, built on first use and
    closed together (use `with`).

    The registry (only when `registry.dsn` is configured) is opened once: it lists the
    nodes, gives `status` its heartbeats and journals the run. Tests inject a `cluster`
    (over `testing.fake.FakeRunner`) and an `opener` returning a stand-in registry.
    """

    def __init__(self, config: str | None = None, *, overrides: Mapping[str, Any] | None = None,
                 fanout: int | None = None, settings: Settings | None = None,
                 cluster: Cluster | None = None, connector: Runner | None = None,
                 opener: RegistryOpener = _open_registry, warn: Warn = warn_stderr):
        self.config = config
        self.overrides: dict[str, Any] = dict(overrides or {})
        if fanout:
            self.overrides["ssh.fanout"] = fanout
        # `--fanout` as given, passed on to the operations too: a rolling restart's batch
        # is bounded by it, not by ssh.fanout.
        self.fanout: int | None = fanout or self.overrides.get("ssh.fanout")
        self.warn = warn
        self._settings = cluster.settings if cluster is not None else settings
        self._cluster = cluster
        self._connector = connector
        self._opener = opener
        self._registry: Registry | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from skeleton_app.config import load_config

            self._settings = load_config(self.config, overrides=self.overrides)
        return self._settings

    def registry(self) -> Registry | None:
        """The command's one registry connection; None when no registry is configured."""
        if self._registry is None and self.settings.registry.dsn:
            self._registry = self._opener(self.settings)
        return self._registry

    def cluster(self) -> Cluster:
        if self._cluster is None:
            from skeleton_app.cluster import Cluster

            self._cluster = Cluster.from_config(settings=self.settings,
                                                registry=self.registry(),
                                                connector=self._connector)
            for warning in self._cluster.warnings:
                self.warn(f"skeleton: warning: {warning}")
        return self._cluster

    def select(self, selection: Selection) -> tuple[Node, ...]:
        """The nodes `selection` names; `@failed` there is the previous run's failures
        (`last_run`), looked up only when named."""
        from skeleton_app.nodes import names_failed

        failed = None
        if names_failed([*selection.nodes, *selection.exclude]):
            failed = self.previous_failures()
        return self.cluster().select(list(selection.nodes), roles=list(selection.roles),
                                     exclude=list(selection.exclude), failed=failed)

    def last_run(self) -> PastRun | None:
        """The previous run of any operation: the registry's newest finished run by this
        user@host, else (no registry) the local state file's."""
        from skeleton_app.app.last_run import PastRun, read_state

        registry = self.registry()
        if registry is None:
            return read_state()
        record = registry.last_run()
        return None if record is None else PastRun.from_record(record)

    def previous_failures(self) -> tuple[str, ...]:
        """What `@failed` stands for; UsageError when there was no run or no failure."""
        run = self.last_run()
        if run is None:
            raise UsageError("@failed: no previous run recorded"
                             + ("" if self.registry() else " on this machine"))
        if not run.failed:
            raise UsageError(f"@failed: no failed nodes in the last run ({run.describe()})")
        return run.failed

    def host(self, host: str, *, user: str | None = None) -> Node:
        """A node id from the configuration or an address (`fab -H`), as a node; `user`
        replaces the node's login (`fab -H user@host`)."""
        from skeleton_app.remote import SSHExecutor

        node = SSHExecutor(cluster=self.cluster()).node(host)
        return dataclasses.replace(node, user=user) if user else node

    def journal(self, operation: str, arguments: Mapping[str, Any], nodes: Sequence[Node],
                result: ClusterResult[Any]) -> None:
        """Record the run and every node's outcome when a registry is configured, and in
        the local state file (`last_run`). Never fails the command: a registry or file that
        cannot be written costs one warning line. Secrets are never recorded."""
        from skeleton_app.app.last_run import PastRun, now, public_arguments, write_state

        arguments = public_arguments(arguments)
        started = now() - timedelta(seconds=result.duration or 0.0)
        try:
            write_state(PastRun.from_result(operation, arguments, result, started_at=started))
        except OSError as exc:
            if not self.settings.registry.dsn:  # else @failed reads the journal
                self.warn(f"skeleton: warning: last run not saved for @failed: {exc}")
        try:
            registry = self.registry()
            if registry is None:
                return
            run_id = registry.record_run(operation, arguments, [n.id for n in nodes])
            registry.record_node_results(run_id, result)
        except SkeletonError as exc:
            self.warn(f"skeleton: warning: run not recorded in the registry: {exc}")

    def finish(self, operation: str, arguments: Mapping[str, Any], nodes: Sequence[Node],
               result: ClusterResult[OutcomeT]) -> Done[OutcomeT]:
        self.journal(operation, arguments, nodes, result)
        return Done(result, tuple(nodes))

    def close(self) -> None:
        try:
            if self._cluster is not None:
                self._cluster.close()
        finally:
            if self._registry is not None:
                self._registry.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- one function per operation


def exec_command(session: Session, nodes: Sequence[Node], command: str, *,
                 timeout: float | None = None, out_dir: str | None = None,
                 on_line: LineSink | None = None, stdin: bytes | None = None,
                 sudo: SudoRequest | None = None) -> Done[None]:
    """Run `command` on every node in parallel (`skeleton cluster exec`, `inv exec`,
    `fab run`). The journal records the size of `stdin` and the sudo user, never the
    bytes or the password."""
    from skeleton_app.ops.run import exec_command as run_op

    result = run_op(session.cluster(), command, nodes, timeout=timeout, out_dir=out_dir,
                    on_line=on_line, fanout=session.fanout, stdin=stdin, sudo=sudo)
    arguments: dict[str, Any] = {"command": command, "timeout": timeout}
    if stdin is not None:
        arguments["stdin_bytes"] = len(stdin)
    if sudo is not None:
        arguments["sudo"] = True
        arguments["sudo_user"] = sudo.user
    return session.finish("exec", arguments, nodes, result)


def status(session: Session, nodes: Sequence[Node]) -> StatusDone[StatusReport]:
    """Probe every node; with a registry, join in its heartbeats and write the snapshot back
    over the session's one connection."""
    from skeleton_app.ops import status as status_op

    cluster = session.cluster()
    result = status_op.status(cluster, nodes, fanout=session.fanout)
    registry_rows = status_op.registry_snapshot(cluster, result, registry=session.registry())
    session.journal("status", {}, nodes, result)
    return StatusDone(result, tuple(nodes), registry_rows)


def deploy(session: Session, nodes: Sequence[Node], *, source: str | None = None,
           dest: str | None = None, delete: bool | None = None, dry_run: bool = False,
           checksum: bool = False, force: bool = False, restart: bool = False,
           lock_wait: float | None = None, allow_secrets: bool = False,
           progress: LiveProgress[DeployEvent] | None = None,
           diff: bool = False) -> Done[DeployOutcome]:
    """Push the code tree to every node (`delete` None: deploy.delete; `lock_wait` None: the
    operation's default), drawing `progress` while it runs; `diff`: a dry run that also
    shows each changed file's diff against the node's copy."""
    from skeleton_app.ops.deploy import LOCK_WAIT
    from skeleton_app.ops.deploy import deploy as deploy_op

    with live(progress) as on_progress:
        result = deploy_op(session.cluster(), nodes, source=source, dest=dest, delete=delete,
                           dry_run=dry_run, checksum=checksum, force=force, restart=restart,
                           lock_wait=LOCK_WAIT if lock_wait is None else lock_wait,
                           allow_secrets=allow_secrets, on_progress=on_progress,
                           fanout=session.fanout, diff=diff)
    return session.finish("deploy-dry-run" if dry_run or diff else "deploy",
                         {"source": source, "dest": dest, "delete": delete,
                          "checksum": checksum, "force": force, "restart": restart,
                          **({"diff": True} if diff else {})},
                         nodes, result)


def rollback(session: Session, nodes: Sequence[Node], *, to: str | None = None,
             restart: bool = False, lock_wait: float | None = None) -> Done[RollbackOutcome]:
    """Point each node's `current` at the release before it, or at `to` (deploy.strategy
    releases); `restart`: restart the daemon there."""
    from skeleton_app.ops.deploy import LOCK_WAIT
    from skeleton_app.ops.deploy.rollback import rollback as rollback_op

    if session.settings.deploy.strategy != "releases":
        # In place, `current` is not what runs: switching it (and the node's digest) would
        # change nothing the daemon uses and mislead the next deploy's no-op check.
        raise UsageError(f"rollback needs deploy.strategy: releases (this configuration"
                         f" deploys {session.settings.deploy.strategy}); nothing was changed")
    result = rollback_op(session.cluster(), nodes, to=to, restart=restart,
                         lock_wait=LOCK_WAIT if lock_wait is None else lock_wait,
                         fanout=session.fanout)
    return session.finish("rollback", {"to": to, "restart": restart}, nodes, result)


def releases(session: Session, nodes: Sequence[Node]) -> Done[ReleasesOutcome]:
    """Each node's releases and which one is current."""
    from skeleton_app.ops.deploy.rollback import list_releases

    result = list_releases(session.cluster(), nodes, fanout=session.fanout)
    return session.finish("releases", {}, nodes, result)


def bootstrap(session: Session, nodes: Sequence[Node], *, source: str | None = None,
              wheelhouse: str | None = None,
              force: bool = False) -> Done[BootstrapOutcome]:
    """Make each node's app dir .venv."""
    from skeleton_app.ops.bootstrap import bootstrap as bootstrap_op

    result = bootstrap_op(session.cluster(), nodes, source=source, wheelhouse=wheelhouse,
                          force=force, fanout=session.fanout)
    return session.finish("bootstrap", {"source": source, "wheelhouse": wheelhouse,
                                        "force": force}, nodes, result)


def daemon(session: Session, nodes: Sequence[Node], action: str, *,
           batch: int | None = None, wait_healthy: bool = False,
           health_timeout: float = 30.0) -> Done[DaemonOutcome]:
    """start | stop | restart | status the node daemon."""
    from skeleton_app.ops.daemon import daemon_control

    result = daemon_control(session.cluster(), nodes, action, batch=batch,
                            wait_healthy=wait_healthy, health_timeout=health_timeout,
                            fanout=session.fanout)
    return session.finish(f"daemon {action}", {"batch": batch, "wait_healthy": wait_healthy,
                                               "health_timeout": health_timeout},
                         nodes, result)


@dataclass(frozen=True, slots=True)
class JackDone(Done[OutcomeT]):
    """`jack status|start|stop`: also, for status, the recorded JackTrip links of the
    selected nodes that are not up (node id -> its dropped links)."""

    dropped: Mapping[str, tuple[LinkState, ...]] = field(default_factory=dict)


def jack_server(session: Session, nodes: Sequence[Node],
                action: str) -> JackDone[JackServerOutcome]:
    """status | start | stop each node's JACK server (`skeleton jack status|start|stop`);
    status also flags the dropped links of each node (a probe only when a record names
    one of them)."""
    from skeleton_app.ops.jack.server import server_control

    result = server_control(session.cluster(), nodes, action, fanout=session.fanout)
    done = session.finish(f"jack {action}", {}, nodes, result)
    dropped: dict[str, tuple[LinkState, ...]] = {}
    if action == "status":
        ids = {n.id for n in nodes}
        store = jack_link_store(session)
        try:
            records, _ = store.load()
        finally:
            store.close()
        if any(end in ids for record in records for end in record.ends):
            from skeleton_app.ops.jack.links import down_links

            dropped = {node: links for node, links in down_links(
                jack_mesh(session, nodes)).items() if node in ids}
    return JackDone(done.result, done.nodes, dropped)


def jack_connect(session: Session, node_ref: str, source: str, dest: str, *,
                 disconnect: bool = False) -> Done[JackConnectOutcome]:
    """Connect (or disconnect) two JACK ports on one node (`skeleton jack connect NODE A
    B`); an unknown node or a malformed port name is exit 2 before anything runs."""
    from skeleton_app.ops.jack.server import check_port_name, connect_ports

    check_port_name(source)
    check_port_name(dest)
    cluster = session.cluster()
    node = cluster.node(node_ref)
    result = connect_ports(cluster, node, source, dest, disconnect=disconnect)
    return session.finish("jack disconnect" if disconnect else "jack connect",
                          {"source": source, "dest": dest}, [node], result)


@dataclass(frozen=True, slots=True)
class SyncDone(Done[OutcomeT]):
    """`sync-models`: also the node the models came from (`nodes` are the targets)."""

    source: Node


def sync_models(session: Session, selected: Sequence[Node], source_node: str, *,
                models_path: str | None = None, model: str | None = None,
                verify: bool = False, relay: bool = False, streams_per_sender: int = 4,
                progress: LiveProgress[SyncProgress] | None = None) -> SyncDone[SyncOutcome]:
    """Copy models from `source_node` (id or address) to every other selected node."""
    from skeleton_app.ops import sync_models as models_op

    cluster = session.cluster()
    source = cluster.node(source_node)
    targets = tuple(n for n in selected if n.id != source.id)
    with live(progress) as on_progress:
        result = models_op.sync_models(
            cluster, source_node=source, targets=targets, models_path=models_path,
            model=model, verify=verify, relay=relay, on_progress=on_progress,
            streams_per_sender=streams_per_sender)
    session.journal("sync-models", {"source": source.id, "model": model,
                                    "models_path": models_path, "verify": verify,
                                    "relay": relay}, targets, result)
    return SyncDone(result, targets, source)


@dataclass(frozen=True, slots=True)
class LogsQuery:
    """`logs` arguments, parsed before any node is contacted (bad values: UsageError)."""

    lines: int | None
    since: str | None
    since_at: float | None
    grep: str | None
    max_bytes: int
    max_line: int

    @classmethod
    def parse(cls, *, lines: str | None, since: str | None, grep: str | None,
              max_bytes: str, max_line: str) -> LogsQuery:
        from skeleton_app.ops import logs as logs_op

        return cls(lines=logs_op.parse_lines(lines) if lines is not None else None,
                   since=since,
                   since_at=logs_op.parse_since(since) if since is not None else None,
                   grep=grep, max_bytes=logs_op.parse_size(max_bytes),
                   max_line=logs_op.parse_size(max_line, what="--max-line"))


def logs(session: Session, nodes: Sequence[Node], query: LogsQuery, *, out_dir: str,
         follow: bool = False, on_line: LineFn | None = None,
         on_error: Callable[[str, str], None] | None = None) -> Done[Any]:
    """Collect every node's logs into `out_dir`, or (`follow`) stream new lines to `on_line`
    until Ctrl-C, which is how a follow ends: not an interruption (exit 0)."""
    from skeleton_app import cancel
    from skeleton_app.ops import logs as logs_op

    cluster = session.cluster()
    result: ClusterResult[Any]
    if follow:
        result = logs_op.follow_logs(cluster, nodes, on_line=on_line or _discard,
                                     lines=query.lines, since=query.since_at, grep=query.grep,
                                     on_error=on_error)
        cancel.reset()
    else:
        result = logs_op.collect_logs(cluster, nodes, lines=query.lines, since=query.since,
                                      grep=query.grep, out_dir=out_dir,
                                      max_bytes=query.max_bytes, max_line=query.max_line)
    return session.finish("logs", {"lines": query.lines, "since": query.since,
                                  "grep": query.grep, "follow": follow}, nodes, result)


def _discard(_node: str, _line: bytes) -> None:
    pass


@dataclass(frozen=True, slots=True)
class CopyRequest:
    """`copy` arguments, checked before any node is selected or contacted (bad ones:
    UsageError, exit 2): sources that exist, REMOTE_DIR absolute or `~/...`, an octal mode."""

    sources: tuple[str, ...]
    remote_dir: str
    mode: int | None = None
    preserve: bool = False

    @classmethod
    def parse(cls, sources: Sequence[str], remote_dir: str, *, mode: str | None = None,
              preserve: bool = False) -> CopyRequest:
        from skeleton_app.ops.copy_paths import local_sources, parse_mode, remote_path

        remote_path(remote_dir, "REMOTE_DIR")
        local_sources(sources)
        return cls(tuple(sources), remote_dir, parse_mode(mode), preserve)


def copy(session: Session, nodes: Sequence[Node], request: CopyRequest, *,
         progress: LiveProgress[TransferEvent] | None = None) -> Done[CopyOutcome]:
    """Copy local files and directories into the request's REMOTE_DIR on every node
    (`cluster copy`, `inv copy`, `fab put`), drawing `progress` while it runs."""
    from skeleton_app.ops import copy as copy_op

    with live(progress) as on_progress:
        result = copy_op.copy_to_nodes(session.cluster(), nodes, request.sources,
                                       request.remote_dir, mode=request.mode,
                                       preserve=request.preserve, fanout=session.fanout,
                                       on_progress=on_progress)
    mode = None if request.mode is None else f"{request.mode:04o}"
    return session.finish("copy", {"sources": copy_op.describe_sources(request.sources),
                                   "remote_dir": request.remote_dir, "mode": mode,
                                   "preserve": request.preserve}, nodes, result)


FETCH_MAX_BYTES = 4 << 30  # per node: a lying node must not fill this machine's disk


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """`fetch` arguments, checked before any node is selected or contacted: REMOTE paths
    absolute or `~/...`, no two with the same last component."""

    remotes: tuple[str, ...]
    local_dir: str
    max_bytes: int = FETCH_MAX_BYTES

    @classmethod
    def parse(cls, remotes: Sequence[str], local_dir: str, *,
              max_bytes: str | int = FETCH_MAX_BYTES) -> FetchRequest:
        from skeleton_app.ops.copy_paths import fetch_names
        from skeleton_app.ops.logs.options import parse_size

        fetch_names(remotes)
        if not local_dir:
            raise UsageError("LOCAL_DIR is empty")
        return cls(tuple(remotes), local_dir, parse_size(max_bytes))


def fetch(session: Session, nodes: Sequence[Node], request: FetchRequest, *,
          progress: LiveProgress[TransferEvent] | None = None) -> Done[FetchOutcome]:
    """Fetch files and directories from every node into LOCAL_DIR/<node>/ (`cluster fetch`,
    `inv fetch`, `fab get`)."""
    from skeleton_app.ops.fetch import fetch_from_nodes

    with live(progress) as on_progress:
        result = fetch_from_nodes(session.cluster(), nodes, request.remotes,
                                  request.local_dir, fanout=session.fanout,
                                  on_progress=on_progress, max_bytes=request.max_bytes)
    return session.finish("fetch", {"remotes": list(request.remotes),  # absolute: retried
                                    "local_dir": os.path.abspath(request.local_dir)},  # anywhere
                          nodes, result)


# ---------------------------------------------------------------- voice jobs (#14)
#
# `skeleton jobs ...`, `inv jobs-*`: the queue is the record of these (no journal entry).
# The submission is checked, waited for and written in app/jobs_submit.py.

def jobs_facade(session: Session) -> Jobs:
    """The session cluster's queue facade (`Cluster.jobs`); tests replace this function."""
    return session.cluster().jobs  # one facade, closed with the cluster


def jobs_submit(session: Session, request: JobsRequest, *,
                on_result: ResultFn | None = None,
                note: Warn | None = None) -> JobsDone:
    """Queue the request's jobs (all or none); with `wait`, wait for them, write each output
    as its job ends (`on_result` then shows it) and stop at `timeout` or Ctrl-C, leaving
    what did not end queued or running (or cancelled: `cancel_on_interrupt`)."""
    from skeleton_app.app.jobs_submit import JobsDone, wait

    jobs = jobs_facade(session)
    if request.engine == "run":
        handles = [jobs.submit("run", request.inputs[0] if request.inputs else None,
                               command=request.command, role=request.role,
                               output_suffix=request.output_suffix)]
    elif request.inputs:
        handles = jobs.submit_many(request.engine, request.inputs)
    else:
        handles = [jobs.submit(request.engine, text=request.text)]
    submitted = tuple(h.submitted for h in handles)
    if not request.wait:
        return JobsDone(submitted)
    say = note or session.warn
    stop_dispatcher = None
    if not jobs.dispatcher_running():
        say("skeleton: no dispatcher is running: dispatching in this process until the"
            f" job{'s end' if len(handles) > 1 else ' ends'}")
        mine = {f"job {h.id} waits: " for h in handles}

        def waits(line: str) -> None:
            # Why a job of ours is not placed (once per change): else --wait looks hung.
            if any(line.startswith(prefix) for prefix in mine):
                say(f"skeleton: {line}")

        stop_dispatcher = jobs.dispatcher(on_event=waits, only=[h.id for h in handles]).start()
    try:
        return wait(jobs, request, handles, on_result, started=stop_dispatcher is not None)
    finally:
        if stop_dispatcher is not None:
            stop_dispatcher()


def jobs_list(session: Session, *, states: Sequence[str] = (),
              limit: int = 100) -> tuple[Job, ...]:
    """The newest jobs, optionally only in these states."""
    from skeleton_app.registry.job_records import JOB_STATES

    for state in states:
        if state not in JOB_STATES:
            raise UsageError(f"unknown job state {state!r} (one of {', '.join(JOB_STATES)})")
    return jobs_facade(session).list(states=states, limit=limit)


def jobs_output(session: Session, job_id: int) -> JobResult:
    """A done job's output (a transcript, a WAV); UsageError when there is none."""
    jobs = jobs_facade(session)
    result = jobs.result_of(jobs.get(job_id))
    if result.output is None:
        why = ("it is " + result.job.state if result.job.state != "done"
               else "it has no output stored")
        raise UsageError(f"job {job_id} has no output: {why}")
    return result


def jobs_show(session: Session, job_id: int) -> JobDetail:
    """One job with every attempt (node, why, start/end, exit, stderr tail) and its files."""
    return jobs_facade(session).show(job_id)


def jobs_cancel(session: Session, job_id: int) -> Job:
    """Queued: cancelled now. Running: its dispatcher kills it on its node. Ended: as is."""
    return jobs_facade(session).cancel(job_id)


def jobs_retry(session: Session, job_id: int) -> Job:
    """Queue a failed or cancelled job again (UsageError for any other state)."""
    job = jobs_facade(session).retry(job_id)
    if job.state != "queued":
        raise UsageError(f"job {job_id} is {job.state}: only a failed or cancelled job can"
                         " be retried")
    return job


def jobs_watch(session: Session, on_event: Callable[[JobEvent], None]) -> None:
    """Every state change, as it happens, until Ctrl-C (how a watch ends: exit 0)."""
    with contextlib.suppress(KeyboardInterrupt):
        for event in jobs_facade(session).watch():
            on_event(event)


def jobs_dispatch(session: Session, *,
                  on_event: Callable[[str], None] | None = None) -> DispatchOutcome:
    """Run jobs until Ctrl-C; the jobs still running are left to their leases."""
    return jobs_facade(session).dispatcher(on_event=on_event).run()


# ---------------------------------------------------------------- JackTrip links (#17)
#
# `skeleton jack link|unlink|mesh`, `inv jack-link|jack-unlink|jack-mesh`: ops/jack/links.py
# over the link records of `jack_link_store`.

def jack_link_store(session: Session) -> LinkStore:
    """What links should exist: the registry's `jack_links` table when one is configured,
    else the state file on this machine (ops/jack/link_file.py)."""
    if session.settings.registry.dsn:
        from skeleton_app.registry.jack_links import open_link_store

        return open_link_store(session.settings)
    from skeleton_app.ops.jack.link_file import FileLinkStore

    return FileLinkStore()


def jack_link(session: Session, hub: str, client: str, *, channels: int | None = None,
              port_offset: int | None = None,
              timeout: float | None = None) -> Done[LinkEndOutcome]:
    """JackTrip's hub server on `hub`, its client on `client`; recorded once it is up."""
    import getpass
    import socket

    from skeleton_app.ops.jack import links

    cluster = session.cluster()
    store = jack_link_store(session)
    try:
        result = links.link(cluster, store, hub, client, channels=channels,
                            port_offset=port_offset,
                            timeout=links.LINK_TIMEOUT if timeout is None else timeout,
                            made_by=f"{getpass.getuser()}@{socket.gethostname()}")
    finally:
        store.close()
    nodes = (cluster.node(hub), cluster.node(client))
    return session.finish("jack link", {"hub": hub, "client": client, "channels": channels,
                                        "port_offset": port_offset}, nodes, result)


def jack_unlink(session: Session, a: str, b: str) -> Done[LinkEndOutcome]:
    """Stop both ends of the link joining `a` and `b` and drop its record (idempotent)."""
    from skeleton_app.ops.jack import links

    cluster = session.cluster()
    store = jack_link_store(session)
    try:
        result = links.unlink(cluster, store, a, b)
    finally:
        store.close()
    nodes = tuple(n for n in cluster.nodes if n.id in result)
    return session.finish("jack unlink", {"a": a, "b": b}, nodes, result)


def jack_mesh(session: Session, nodes: Sequence[Node] | None = None) -> Mesh:
    """Every recorded link's state and every jacktrip process no record names."""
    from skeleton_app.ops.jack import links

    store = jack_link_store(session)
    try:
        return links.mesh(session.cluster(), store, nodes, fanout=session.fanout)
    finally:
        store.close()


def jack_down_links(session: Session,
                    nodes: Sequence[Node] | None = None) -> dict[str, tuple[LinkState, ...]]:
    """Per node id, the recorded links touching it that are not up (`jack status` flags
    them as dropped)."""
    from skeleton_app.ops.jack.links import down_links

    return down_links(jack_mesh(session, nodes))
