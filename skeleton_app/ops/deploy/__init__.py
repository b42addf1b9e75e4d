"""`cluster deploy`: push the code tree to the nodes with rsync, in parallel, safely.

Per node, in order (all under one lock, one SSH channel that `payloads/deploy.sh` holds open):

1. lock: `flock` on DEST/.skeleton-deploy/lock, held by a shell on the node for as long as our
   channel is open. A second deploy waits `lock_wait` seconds, then fails with "deploy in
   progress by USER since TIME". A killed deploy's channel dies with it, and so does its lock.
2. digest: the node prints the digest of the last tree deployed there. When it equals the
   local digest (a content hash of exactly the files rsync would send, excludes honoured),
   nothing else happens: a no-change redeploy costs one round trip (`force` skips the check).
3. `begin`: the node checks that rsync runs, and removes its digest, so that a deploy dying
   from here on is never mistaken for a finished one.
4. rsync (`transfers.rsync`): compressed, perms and times kept, `--delay-updates` with a
   partial dir: files are renamed into place at the end, so an interrupted deploy leaves old
   or new files, never half-written ones, and running it again converges.
5. `deploy.after` commands, in DEST, in order; the first failure is the node's failure.
6. `commit`: the new digest is written atomically (its first line is the code version that
   `cluster status` shows); then the channel closes and the lock goes.

The receiving rsync on the node runs under `flock` on the directory DEST/.skeleton-deploy
(the writer lock, through `--rsync-path`), and `begin` waits for that lock: a receiver whose
controller was killed (and whose session lock went with it) is waited for, never raced. Our
rsync dies with us (`cancel.die_with_parent`). Ctrl-C (`skeleton_app.cancel`) stops rsync at
once; the node keeps its previous files (updates are applied only at the end of a transfer);
the result says per node whether it was committed before the interrupt, or not.

`restart=True` stops the daemon before step 3 and starts it after step 6, per node.
`dry_run=True` only runs `rsync --dry-run` and lists what would change (no lock, no writes).

Paths rsync must never touch on the node: the state dir and the daemon's pid file (excluded),
and the logs and models dirs under the app dir (protected from --delete, still deployed).
"""

from __future__ import annotations

import getpass
import os
import posixpath
import re
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from skeleton_app import cancel, layout, payloads
from skeleton_app.cluster import Cluster
from skeleton_app.errors import NodeError, NodeErrorKind, UsageError
from skeleton_app.nodes import Node, validate_app_dir
from skeleton_app.ops.daemon import control_node
from skeleton_app.results import ClusterResult, NodeResult, failure
from skeleton_app.secret_scan import SecretScan
from skeleton_app.transfers import (
    DEFAULT_PARTIAL_DIR,
    FileChange,
    Progress,
    TransferResult,
    classify_failure,
    disk_full,
    rsync,
    supports,
)
from skeleton_app.transfers.tree import TreeDigest, tree_digest

STATE_DIR = layout.DEPLOY_DIR
DIGEST_FILE = layout.DIGEST_FILE
LOCK_WAIT = 10.0
_MAX_CHANGES_KEPT = 10000  # per node in the result; the counters stay exact


@dataclass(frozen=True, slots=True)
class DeployedDigest:
    """The digest file on a node (written by `commit`)."""

    version: str | None = None
    tree: str | None = None
    delete: bool = False
    deployed_at: str | None = None
    deployed_by: str | None = None

    @classmethod
    def parse(cls, lines: Sequence[str]) -> DeployedDigest:
        if not lines:
            return cls()
        values = dict(line.partition("=")[::2] for line in lines[1:] if "=" in line)
        return cls(version=lines[0].strip() or None, tree=values.get("tree") or None,
                   delete=values.get("delete") == "1", deployed_at=values.get("deployed_at"),
                   deployed_by=values.get("deployed_by"))


def digest_lines(digest: TreeDigest, *, delete: bool, owner: str, source: str) -> list[str]:
    """The digest file: line 1 the code version; then key=value lines (no line is ".")."""
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    clean = source.replace("\\", "\\\\").replace("\n", "\\n")
    return [digest.version, f"tree={digest.hex}", f"files={digest.files}",
            f"bytes={digest.bytes}", f"delete={int(delete)}", f"deployed_at={when}",
            f"deployed_by={owner}", f"source={clean}"]


# ------------------------------------------------------------------------ progress events


@dataclass(frozen=True, slots=True)
class DeployEvent:
    """A step of one node's deploy, for live displays. `phase` is one of lock, stop, sync,
    after, commit, start, done, unchanged, failed."""

    node: str
    phase: str
    percent: int | None = None
    bytes: int | None = None
    files: int = 0
    message: str = ""


OnProgress = Callable[[DeployEvent], None]


def _script(name: str) -> str:
    return payloads.text(name)


_OWNER_RE = re.compile(r"^owner=(?P<owner>.*) since=(?P<since>\S+)$")


# ------------------------------------------------------------------------ the operation


@dataclass(frozen=True, slots=True)
class DeployPlan:
    """Everything decided before the first node is touched (shared by all nodes)."""

    source: str  # absolute, no trailing slash
    dest: str | None  # None: each node's app dir
    exclude: tuple[str, ...]
    filters: tuple[str, ...]
    delete: bool
    dry_run: bool
    checksum: bool
    force: bool
    restart: bool
    after: tuple[str, ...]
    lock_wait: float
    owner: str
    digest: TreeDigest | None = None
    digest_excludes: tuple[str, ...] = field(default=())


def plan(cluster: Cluster, *, source: str | os.PathLike[str] | None = None,
         dest: str | None = None, delete: bool | None = None, dry_run: bool = False,
         checksum: bool = False, force: bool = False, restart: bool = False,
         lock_wait: float = LOCK_WAIT, digest: bool = True,
         allow_secrets: bool = False) -> DeployPlan:
    """Resolve and check the arguments (UsageError, nothing touched) and digest the tree
    (unless `digest` is false). A tree holding private key material is refused (UsageError
    naming the files) unless `allow_secrets`: see skeleton_app.secret_scan."""
    settings = cluster.settings
    src = _resolve_source(source, settings.deploy.source, settings.source)
    if dest is not None:
        _check_dest(dest)
    if lock_wait < 0:
        raise UsageError(f"lock wait must be zero or more seconds, got {lock_wait:g}")
    exclude = (*settings.deploy.exclude, f"/{STATE_DIR}/", f"/{layout.PID_FILE}",
               f"/{layout.LOCK_FILE}")
    filters = tuple(f"P /{d.strip('/')}/" for d in (settings.app.logs_dir,
                                                    settings.app.models_dir)
                    if d and not d.startswith("/"))
    owner = _owner()
    digest_excludes = (*exclude, f"{DEFAULT_PARTIAL_DIR}/")
    tree = tree_digest(src, digest_excludes) if digest and not dry_run else None
    if tree is not None and not allow_secrets:
        _refuse_secrets(tree, src)
    return DeployPlan(
        source=src, dest=dest, exclude=exclude, filters=filters,
        delete=settings.deploy.delete if delete is None else delete, dry_run=dry_run,
        checksum=checksum, force=force, restart=restart, after=tuple(settings.deploy.after),
        lock_wait=lock_wait, owner=owner, digest=tree, digest_excludes=digest_excludes,
    )


def deploy(
    cluster: Cluster,
    nodes: Sequence[Node],
    *,
    source: str | os.PathLike[str] | None = None,
    dest: str | None = None,
    delete: bool | None = None,
    dry_run: bool = False,
    checksum: bool = False,
    force: bool = False,
    restart: bool = False,
    on_progress: OnProgress | None = None,
    lock_wait: float = LOCK_WAIT,
    fanout: int | None = None,
    on_result: Callable[[NodeResult[Any]], None] | None = None,
    allow_secrets: bool = False,
) -> ClusterResult[Any]:
    """Push `source` (default `deploy.source`) to `dest` (default each node's app dir) on
    every node in parallel, bounded by fanout. One node's failure never stops the others.

    Per node result: exit 0 deployed or already up to date (`data["unchanged"]`); non-zero
    when rsync, an after command or the daemon failed there (rsync's exit code, or 1);
    `errors` when the node was unreachable, its lock was held, or it lacks rsync.
    A tree holding private key material is refused (UsageError naming the files, nothing
    sent; skeleton_app.secret_scan) unless `allow_secrets`; `dry_run` refuses it too.
    `data` holds `changes` (path, kind, item, size), `files_changed`, `bytes_sent`, `stats`.
    """
    p = plan(cluster, source=source, dest=dest, delete=delete, dry_run=dry_run,
             checksum=checksum, force=force, restart=restart, lock_wait=lock_wait, digest=False,
             allow_secrets=allow_secrets)
    # The first wave's handshakes overlap hashing the tree (a no-change deploy is little
    # more than those two). A tree that cannot be read fails here, before any node is
    # touched; the warm-up threads then end on their own.
    for node in nodes:
        _dest_for(p, node)  # every destination checked before any node is touched
    wait = cluster.connector.warm(nodes[:fanout or cluster.settings.ssh.fanout])
    tree = tree_digest(p.source, p.digest_excludes)  # a dry run too: it finds private keys
    if not allow_secrets:
        _refuse_secrets(tree, p.source)
    if not dry_run:
        p = replace(p, digest=tree)
    emit = _emitter(on_progress)
    result = cluster.map(lambda node: _deploy_node(cluster, node, p, emit), nodes,
                         fanout=fanout, operation="deploy-dry-run" if dry_run else "deploy",
                         on_result=on_result)
    wait()
    return result


def _refuse_secrets(tree: TreeDigest, source: str) -> None:
    """Private keys or a database password in the tree: UsageError naming the files,
    nothing is sent."""
    if tree.secrets:
        raise UsageError(SecretScan.of(source, tree.secrets).refusal())


def _emitter(on_progress: OnProgress | None) -> OnProgress:
    if on_progress is None:
        return lambda event: None
    lock = threading.Lock()

    def emit(event: DeployEvent) -> None:
        with lock:  # nodes report from many threads; displays need not be thread-safe
            on_progress(event)

    return emit


def _resolve_source(flag: str | os.PathLike[str] | None, configured: str,
                    config_file: str | None) -> str:
    if flag is not None:
        path = Path(flag)
        what = "--source"
    else:
        path = Path(configured)
        what = "deploy.source"
        # A relative deploy.source is relative to the config file that names it.
        if not path.is_absolute() and config_file:
            path = Path(config_file).resolve().parent / path
    if not path.exists():
        raise UsageError(f"{what}: {os.fspath(path)!r} does not exist")
    if not path.is_dir():
        raise UsageError(f"{what}: {os.fspath(path)!r} is not a directory")
    return os.path.abspath(path)


def _check_dest(dest: str) -> None:
    if not dest or "\n" in dest or "\0" in dest:
        raise UsageError(f"--dest: invalid path {dest!r}")


def _dest_for(p: DeployPlan, node: Node) -> str:
    dest = p.dest if p.dest is not None else node.app_dir
    # A relative --dest is under the node's app dir.
    dest = dest if dest.startswith("/") else posixpath.join(node.app_dir, dest)
    dest = posixpath.normpath(dest)
    if dest == "/":
        raise UsageError("refusing to deploy to / (check --dest)")
    if p.delete:
        # --delete empties whatever the source lacks: never /, a home, or a system path,
        # whatever a registry row or --dest says (a hostile row once wiped a node's home).
        try:
            validate_app_dir(dest)
        except ValueError as exc:
            raise UsageError(f"refusing deploy --delete on {node.id}: {exc}") from None
    return dest


def _owner() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _change_data(changes: Sequence[FileChange]) -> list[dict[str, Any]]:
    return [c.as_dict() for c in changes[:_MAX_CHANGES_KEPT]]


def _sync(cluster: Cluster, node: Node, p: DeployPlan, dest: str, emit: OnProgress,
          *, dry_run: bool) -> TransferResult:
    seen = 0

    def on_change(change: FileChange) -> None:
        nonlocal seen
        seen += 1
        emit(DeployEvent(node.id, "sync", files=seen, message=change.path))

    def on_progress(progress: Progress) -> None:
        emit(DeployEvent(node.id, "sync", percent=progress.percent, bytes=progress.bytes,
                         files=seen))

    opts: list[str] = []
    if dry_run and supports("--mkpath"):
        opts.append("--mkpath")  # a first dry run to a fresh node must not fail on the path
    # The receiver holds the writer lock for as long as it lives (deploy.sh's `begin` waits
    # for it): it may outlive our session, and so the session's lock, if we are killed.
    writer = None if dry_run else shlex.join(
        ["flock", "-w", "30", f"{dest}/{STATE_DIR}", "rsync"])
    ssh = cluster.settings.ssh
    return rsync(
        node, p.source + "/", dest + "/", settings=ssh, exclude=p.exclude, filters=p.filters,
        delete=p.delete, dry_run=dry_run, checksum=p.checksum, rsync_opts=opts,
        io_timeout=int(ssh.command_timeout), on_change=on_change, on_progress=on_progress,
        rsync_path=writer,
    )


def _transfer_data(tr: TransferResult) -> dict[str, Any]:
    return {
        "changes": _change_data(tr.changes),
        "changes_total": len(tr.changes),
        "files_changed": tr.files_changed,
        "bytes_sent": tr.bytes_sent,
        "stats": tr.stats.as_dict() if tr.stats else None,
    }


def _deploy_node(cluster: Cluster, node: Node, p: DeployPlan, emit: OnProgress) -> NodeResult[Any]:
    try:
        return _deploy_one(cluster, node, p, emit)
    except NodeError as exc:
        # Unreachable, lost mid-deploy: the display must not stay on the last phase.
        emit(DeployEvent(node.id, "failed", message=exc.message))
        raise


def _deploy_one(cluster: Cluster, node: Node, p: DeployPlan, emit: OnProgress) -> NodeResult[Any]:
    started = time.monotonic()
    dest = _dest_for(p, node)
    base: dict[str, Any] = {"dest": dest, "dry_run": p.dry_run}

    def done(**kw: Any) -> NodeResult[Any]:
        return NodeResult(node=node.id, duration=time.monotonic() - started, **kw)

    def fail(kind: NodeErrorKind, message: str, data: dict[str, Any]) -> NodeResult[Any]:
        emit(DeployEvent(node.id, "failed", message=message))
        return replace(failure(node.id, kind, message, time.monotonic() - started), data=data)

    if p.dry_run:
        emit(DeployEvent(node.id, "sync", message="dry run"))
        tr = _sync(cluster, node, p, dest, emit, dry_run=True)
        data = {**base, **_transfer_data(tr)}
        if not tr.ok:
            return _rsync_failed(node, tr, data, emit, started)
        emit(DeployEvent(node.id, "done", files=tr.files_changed))
        return done(exit_code=0, stdout=_listing(tr.changes), data=data)

    tree = p.digest
    assert tree is not None
    emit(DeployEvent(node.id, "lock"))
    command = shlex.join(["sh", "-c", _script("deploy.sh"), "skeleton-deploy", dest,
                          f"{p.lock_wait:g}", p.owner, "rsync"])
    session = cluster.connector.session(node, command, what="deploy helper")
    try:
        # The helper answers each request in milliseconds; a node silent for this long is
        # frozen or gone (a finite wait: the lock must not pin a deploy forever).
        helper_timeout = max(30.0, 3 * cluster.settings.ssh.connect_timeout)
        header: list[str] = []
        while True:
            line = session.read_line(p.lock_wait + helper_timeout)
            if line is None or line == "ready":
                break
            header.append(line)
        state = next((ln.partition("=")[2] for ln in header if ln.startswith("state=")), "")
        if state == "busy":
            m = next((_OWNER_RE.match(ln) for ln in header if ln.startswith("owner=")), None)
            who = f"{m['owner']} since {m['since']}" if m else "another deploy"
            return fail(NodeErrorKind.LOCAL, f"deploy in progress by {who} (lock held"
                        f" {p.lock_wait:g}s later)", base)
        if state != "locked" or line is None:
            message = next((ln.partition("=")[2] for ln in header if ln.startswith("message=")),
                           "") or "the node's deploy helper failed" + session.stderr_tail()
            emit(DeployEvent(node.id, "failed", message=message))
            return done(exit_code=1, stderr=message + "\n", data=base)
        last = DeployedDigest.parse([ln[len("digest="):] for ln in header
                                     if ln.startswith("digest=")])
        base.update(previous=last.version, version=tree.version)
        unchanged = (not p.force and last.tree == tree.hex
                     and (last.delete or not p.delete))

        if not unchanged:
            # Before the daemon is stopped: a node that cannot take the deploy keeps running.
            reply = session.request(["begin"], helper_timeout)
            if reply == "error=rsync-missing":
                return fail(NodeErrorKind.LOCAL, f"rsync is not installed on {node.id}"
                            " (needed on every node: apt-get install rsync)", base)
            if reply == "error=writer-busy":
                return fail(NodeErrorKind.LOCAL, "an rsync of an earlier deploy (whose"
                            " controller died) is still writing on this node; try again",
                            base)
            if reply != "ok":
                return fail(NodeErrorKind.ERROR, f"deploy helper: {reply}", base)

        if p.restart:
            if unchanged:  # `begin` records who holds the lock; a restart holds it too
                session.request(["own"], helper_timeout)
            emit(DeployEvent(node.id, "stop"))
            stopped = control_node(cluster, node, "stop")
            base["daemon_stop"] = dict(stopped.data)
            if not stopped.ok:
                return _daemon_failed(node, "stop", stopped, base, emit, started)

        listing = ""
        if unchanged:
            data = {**base, "unchanged": True, "changes": [], "changes_total": 0,
                    "files_changed": 0, "bytes_sent": 0, "stats": None}
        else:
            emit(DeployEvent(node.id, "sync"))
            tr = _sync(cluster, node, p, dest, emit, dry_run=False)
            data = {**base, "unchanged": False, **_transfer_data(tr)}
            listing = _listing(tr.changes)
            failed: NodeResult[Any] | None = None
            if not tr.ok:
                full = disk_full(tr) or (tr.exit_code == 11 and _out_of_space(cluster, node,
                                                                             dest))
                if full:
                    _remove_partials(cluster, node, dest)
                failed = _rsync_failed(node, tr, data, emit, started, full=full)
            elif cancel.cancelled():
                failed = fail(NodeErrorKind.INTERRUPTED, f"{cancel.INTERRUPTED} after the"
                              " transfer: the new files are in place, but not committed"
                              " (after commands not run); the next deploy completes it",
                              data)
            else:
                failed = _run_afters(cluster, node, p, dest, data, emit, started)
            if failed is not None:
                if p.restart:
                    # The daemon was stopped for this deploy: bring it back on what is there
                    # (after a failed transfer, the old files) rather than leave it down,
                    # Ctrl-C or not.
                    again = control_node(cluster, node, "start", cancellable=False)
                    failed = replace(failed, data={**failed.data,
                                                   "daemon_start": dict(again.data)})
                return failed
            emit(DeployEvent(node.id, "commit"))
            lines = digest_lines(tree, delete=p.delete, owner=p.owner, source=p.source)
            # Once sent, the commit's answer is awaited even after a Ctrl-C: the result
            # must say truthfully whether this node was committed.
            reply = session.request(["commit", *lines, "."], helper_timeout,
                                    cancellable=False)
            if reply != "ok":
                emit(DeployEvent(node.id, "failed", message=reply))
                return done(exit_code=1, stderr=f"deployed, but {reply}\n", data=data)

        if p.restart:
            emit(DeployEvent(node.id, "start"))
            begun = control_node(cluster, node, "start")
            data["daemon_start"] = dict(begun.data)
            if not begun.ok:
                return _daemon_failed(node, "start", begun, data, emit, started)
        emit(DeployEvent(node.id, "unchanged" if unchanged else "done",
                         files=int(data["files_changed"]), bytes=int(data["bytes_sent"])))
        return done(exit_code=0, stdout=listing, data=data)
    finally:
        session.close()


def _run_afters(cluster: Cluster, node: Node, p: DeployPlan, dest: str,
                data: dict[str, Any], emit: OnProgress, started: float) -> NodeResult[Any] | None:
    """Run `deploy.after` in order; the first failure is returned as the node's result."""
    for command_line in p.after:
        emit(DeployEvent(node.id, "after", message=command_line))
        r = _run_after(cluster, node, dest, command_line)
        data.setdefault("after", []).append(
            {"command": command_line, "exit_code": r.exit_code, "error": r.error})
        if not r.ok:
            message = f"after command {command_line!r} failed: {r.summary()}"
            emit(DeployEvent(node.id, "failed", message=message))
            return replace(r, stderr=r.stderr + message + "\n", data={**data, "message": message},
                           duration=time.monotonic() - started)
    return None


def _listing(changes: Sequence[FileChange]) -> str:
    return "".join(f"{c.kind} {c.path}\n" for c in changes[:_MAX_CHANGES_KEPT])


def _out_of_space(cluster: Cluster, node: Node, dest: str) -> bool:
    """rsync's I/O error came without its message (the receiver's last words can be lost
    when it quits): is `dest`'s file system out of space? Less than 1 MiB left counts."""
    from skeleton_app.ssh.runner import RunOptions

    line = f"df -P -B1 -- {shlex.quote(dest)} | awk 'NR == 2 {{ print $4 }}'"
    r = cluster.connector.run(node, line, RunOptions(timeout=30))
    left = r.stdout.strip()
    return r.ok and left.isdigit() and int(left) < 1 << 20


def _rsync_failed(node: Node, tr: TransferResult, data: dict[str, Any], emit: OnProgress,
                  started: float, *, full: bool = False) -> NodeResult[Any]:
    kind, message = classify_failure(tr, node.id)
    if full and not disk_full(tr):
        kind = None  # the node answered: its disk is full, the connection is fine
        message += " (less than 1 MiB free on the destination)"
    if full or disk_full(tr):
        message = ("destination disk full: " + message + "; nothing was put in place"
                   " (updates are applied only at the end of a transfer)")
    elif tr.interrupted:
        message += ("; nothing committed: the node keeps its previous files (updates are"
                    " applied only at the end of a transfer)")
        data = {**data, "files_changed": 0}  # what reached the holding dirs is not applied
    emit(DeployEvent(node.id, "failed", message=message))
    if kind is not None:
        return replace(failure(node.id, kind, message, time.monotonic() - started),
                       stderr=tr.stderr, data=data)
    return NodeResult(node=node.id, exit_code=tr.exit_code or 1, stderr=tr.stderr,
                      error=None, duration=time.monotonic() - started,
                      data={**data, "message": message})


def _daemon_failed(node: Node, what: str, r: NodeResult[Any], data: dict[str, Any],
                   emit: OnProgress, started: float) -> NodeResult[Any]:
    summary = str(r.data.get("summary") or r.summary())
    message = f"daemon {what} failed: {summary}"
    emit(DeployEvent(node.id, "failed", message=message))
    if r.error_kind is not None:
        return replace(r, error=message, data=data, duration=time.monotonic() - started)
    return replace(r, exit_code=r.exit_code or 1, stderr=r.stderr + message + "\n",
                   data={**data, "message": message}, duration=time.monotonic() - started)


def _run_after(cluster: Cluster, node: Node, dest: str, command_line: str) -> NodeResult[Any]:
    from skeleton_app.ssh.runner import RunOptions

    # The command runs exactly as configured, in DEST; SKELETON_NODE_ID tells it where it is.
    line = (f"export SKELETON_NODE_ID={shlex.quote(node.id)}; cd {shlex.quote(dest)} &&"
            f" {command_line}")
    return cluster.connector.run(node, line, RunOptions(
        timeout=cluster.settings.ssh.command_timeout))


def _remove_partials(cluster: Cluster, node: Node, dest: str) -> None:
    """After a disk-full failure, free the space the holding directories took (a later deploy
    will resend): on a full disk, keeping them for a resume would only keep it full."""
    from skeleton_app.ssh.runner import RunOptions

    line = shlex.join(["find", dest, "-type", "d", "-name", DEFAULT_PARTIAL_DIR, "-prune",
                       "-exec", "rm", "-rf", "--", "{}", "+"])
    cluster.connector.run(node, line, RunOptions(timeout=60))


def iter_changes(result: ClusterResult[Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(node, change) pairs of a deploy result, for listings."""
    for node, r in result.items():
        for change in r.data.get("changes", ()):
            yield node, change
