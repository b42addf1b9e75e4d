"""`deploy()`: the fan-out over the nodes, and one node's deploy step by step (the order and
its guarantees are in the package docstring)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from skeleton_app import cancel
from skeleton_app.cluster import Cluster
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.ops.deploy import apply, releases
from skeleton_app.ops.deploy.apply import DeployResult
from skeleton_app.ops.deploy.diff import compare
from skeleton_app.ops.deploy.digest import digest_lines
from skeleton_app.ops.deploy.events import DeployEvent, OnProgress, emitter
from skeleton_app.ops.deploy.lock import Busy, HelperFailed, HelperTalk, drive, helper_command
from skeleton_app.ops.deploy.outcome import DeployOutcome, Transfer
from skeleton_app.ops.deploy.plan import LOCK_WAIT, DeployPlan, dest_for, plan, refuse_secrets
from skeleton_app.results import ClusterResult, NodeResult, failure
from skeleton_app.transfers import TransferResult, disk_full
from skeleton_app.transfers.tree import tree_digest


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
    diff: bool = False,
) -> ClusterResult[DeployOutcome]:
    """Push `source` (default `deploy.source`) to `dest` (default each node's app dir) on
    every node in parallel, bounded by fanout. One node's failure never stops the others.

    Per node result: exit 0 deployed or already up to date (`outcome.unchanged`); non-zero
    when rsync, an after command or the daemon failed there (rsync's exit code, or 1);
    `errors` when the node was unreachable, its lock was held, or it lacks rsync (the last
    two of kind LOCAL: exit 1, the node answered).
    A tree holding private key material is refused (UsageError naming the files, nothing
    sent; skeleton_app.secret_scan) unless `allow_secrets`; `dry_run` refuses it too.
    `outcome` (a DeployOutcome) holds the changes, files changed, bytes sent, rsync's stats.
    `diff` (implies `dry_run`): `outcome.diff` holds each changed file's diff against the
    node's copy (ops/deploy/diff.py).
    """
    dry_run = dry_run or diff
    p = plan(cluster, source=source, dest=dest, delete=delete, dry_run=dry_run,
             checksum=checksum, force=force, restart=restart, lock_wait=lock_wait, digest=False,
             allow_secrets=allow_secrets)
    p = replace(p, diff=diff)
    p = releases.plan_releases(p, cluster.settings)
    # The first wave's handshakes overlap hashing the tree (a no-change deploy is little
    # more than those two). A tree that cannot be read fails here, before any node is
    # touched; the warm-up threads then end on their own.
    for node in nodes:
        dest_for(p, node)  # every destination checked before any node is touched
    wait = cluster.connector.warm(nodes[:fanout or cluster.settings.ssh.fanout])
    tree = tree_digest(p.source, p.digest_excludes)  # a dry run too: it finds private keys
    if not allow_secrets:
        refuse_secrets(tree, p.source)
    if not dry_run:
        p = releases.name_release(replace(p, digest=tree), tree)
    emit = emitter(on_progress)
    result: ClusterResult[DeployOutcome] = cluster.map(
        lambda node: _deploy_node(cluster, node, p, emit), nodes, fanout=fanout,
        operation="deploy-dry-run" if dry_run else "deploy", on_result=on_result)
    wait()
    return result


def _deploy_node(cluster: Cluster, node: Node, p: DeployPlan, emit: OnProgress) -> DeployResult:
    try:
        if p.dry_run:
            return _dry_run(cluster, node, p, emit)
        return _deploy_one(cluster, node, p, emit)
    except NodeError as exc:
        # Unreachable, lost mid-deploy: the display must not stay on the last phase.
        emit(DeployEvent(node.id, "failed", message=exc.message))
        raise


def _dry_run(cluster: Cluster, node: Node, p: DeployPlan, emit: OnProgress) -> DeployResult:
    started = time.monotonic()
    emit(DeployEvent(node.id, "sync", message="dry run"))
    dest = dest_for(p, node)
    # Releases: what would change against the live release.
    target = releases.current_dir(dest) if p.release is not None else dest
    tr = apply.sync(cluster, node, p, target, emit, dry_run=True)
    out = DeployOutcome(dest=dest, dry_run=True, transfer=Transfer.of(tr))
    if not tr.ok:
        return apply.rsync_failed(node, tr, out, emit, started)
    if p.diff:
        emit(DeployEvent(node.id, "sync", message="diff"))
        # Against the live release's files under deploy.strategy releases.
        out = replace(out, diff=compare(cluster.connector, node, p.source, target, out.changes,
                                        timeout=cluster.settings.ssh.op_timeout))
        if out.diff is not None and out.diff.error is not None:
            emit(DeployEvent(node.id, "failed", message=out.diff.error))
            return NodeResult(node=node.id, exit_code=1, stderr=out.diff.error + "\n",
                              duration=time.monotonic() - started,
                              outcome=replace(out, message=out.diff.error))
    emit(DeployEvent(node.id, "done", files=tr.files_changed))
    return NodeResult(node=node.id, exit_code=0, stdout=apply.listing(tr.changes),
                      duration=time.monotonic() - started, outcome=out)


def _deploy_one(cluster: Cluster, node: Node, p: DeployPlan, emit: OnProgress) -> DeployResult:
    started = time.monotonic()
    dest = dest_for(p, node)
    out = DeployOutcome(dest=dest)

    def done(out: DeployOutcome, *, exit_code: int, stdout: str = "",
             stderr: str = "") -> DeployResult:
        return NodeResult(node=node.id, exit_code=exit_code, stdout=stdout, stderr=stderr,
                          duration=time.monotonic() - started, outcome=out)

    def refused(kind: NodeErrorKind, message: str, out: DeployOutcome) -> DeployResult:
        emit(DeployEvent(node.id, "failed", message=message))
        return replace(failure(node.id, kind, message, time.monotonic() - started),
                       outcome=out)

    tree = p.digest
    assert tree is not None
    emit(DeployEvent(node.id, "lock"))
    session = cluster.connector.session(node, helper_command(dest, p.lock_wait, p.owner),
                                        what="deploy helper")
    # The helper answers each request in milliseconds; a node silent for this long is
    # frozen or gone (a finite wait: the lock must not pin a deploy forever).
    talk = HelperTalk(node.id, p.lock_wait, max(30.0, 3 * cluster.settings.ssh.connect_timeout))
    try:
        granted = drive(talk.acquire(), session)
        if isinstance(granted, Busy):
            # The node answered: a precondition, not an unreachable node (kind LOCAL: exit 1).
            return refused(NodeErrorKind.LOCAL, f"deploy in progress by {granted.holder}"
                           f" (lock held {p.lock_wait:g}s later)", out)
        if isinstance(granted, HelperFailed):
            message = granted.message or ("the node's deploy helper failed"
                                          + session.stderr_tail())
            emit(DeployEvent(node.id, "failed", message=message))
            return done(out, exit_code=1, stderr=message + "\n")
        out = replace(out, locked=True, previous=granted.previous.version, version=tree.version)
        unchanged = not p.force and granted.previous.covers(tree, delete=p.delete) and (
            # A tree deployed in place is not a release, nor the other way round.
            (granted.previous.release is None) == (p.release is None))

        if not unchanged:
            # Before the daemon is stopped: a node that cannot take the deploy keeps running.
            reason = drive(talk.begin(), session)
            if reason == "rsync-missing":
                return refused(NodeErrorKind.LOCAL, f"rsync is not installed on {node.id}"
                               " (needed on every node: apt-get install rsync)", out)
            if reason == "writer-busy":
                return refused(NodeErrorKind.LOCAL, "an rsync of an earlier deploy (whose"
                               " controller died) is still writing on this node; try again",
                               out)
            if reason is not None:
                return refused(NodeErrorKind.ERROR, f"deploy helper: error={reason}", out)
        staged: releases.Staged | None = None
        if not unchanged and p.release is not None:
            prepared = releases.prepare(cluster, node, dest, p.release)
            if isinstance(prepared, str):
                return refused(NodeErrorKind.LOCAL, prepared, out)
            staged = prepared
            out = replace(out, release=staged.id)

        if p.restart:
            if unchanged:  # `begin` records who holds the lock; a restart holds it too
                drive(talk.own(), session)
            emit(DeployEvent(node.id, "stop"))
            stopped, facts = apply.daemon(cluster, node, "stop")
            out = replace(out, daemon_stop=facts)
            if not stopped.ok:
                no_stop = apply.daemon_failed(node, "stop", stopped, facts, out, emit, started)
                if staged is not None:
                    no_stop = releases.abort(cluster, node, dest, staged, no_stop)
                return no_stop

        listing = ""
        if unchanged:
            out = replace(out, unchanged=True, transfer=Transfer())
        else:
            emit(DeployEvent(node.id, "sync"))
            target = staged.dir if staged is not None else dest
            tr = apply.sync(cluster, node, p, target, emit, dry_run=False, state_dir=dest,
                            link_dest=releases.link_dest(dest, staged) if staged else None)
            out = replace(out, unchanged=False, transfer=Transfer.of(tr))
            listing = apply.listing(tr.changes)
            failed = _transfer_failed(cluster, node, tr, out, emit, started)
            if failed is None and staged is not None and p.release is not None:
                failed = releases.link(cluster, node, dest, staged, p.release, out, started)
            if failed is None:
                out, failed = apply.run_afters(cluster, node, p, target, out, emit, started)
            lines = digest_lines(tree, delete=p.delete, owner=p.owner, source=p.source)
            if staged is not None:
                lines.append(f"release={staged.id}")
            if failed is None and staged is not None and p.release is not None:
                emit(DeployEvent(node.id, "commit", message=f"switch to {staged.id}"))
                failed, _ = releases.switch(cluster, node, dest, staged, p.release, lines, out,
                                            started)
                if failed is not None:
                    emit(DeployEvent(node.id, "failed", message=failed.error or ""))
            if failed is not None:
                if staged is not None:  # never switched: the half-built release goes
                    failed = releases.abort(cluster, node, dest, staged, failed)
                if p.restart:
                    # The daemon was stopped for this deploy: bring it back on what is there
                    # (after a failed transfer, the old files) rather than leave it down,
                    # Ctrl-C or not.
                    _, again = apply.daemon(cluster, node, "start", cancellable=False)
                    failed = replace(failed, outcome=replace(
                        failed.outcome or out, daemon_start=again))
                return failed
            emit(DeployEvent(node.id, "commit"))
            problem = drive(talk.commit(lines), session)
            if problem is not None:
                emit(DeployEvent(node.id, "failed", message=problem))
                return done(out, exit_code=1, stderr=f"deployed, but {problem}\n")

        if p.restart:
            emit(DeployEvent(node.id, "start"))
            begun, facts = apply.daemon(cluster, node, "start")
            out = replace(out, daemon_start=facts)
            if not begun.ok:
                return apply.daemon_failed(node, "start", begun, facts, out, emit, started)
        emit(DeployEvent(node.id, "unchanged" if unchanged else "done",
                         files=out.files_changed, bytes=out.bytes_sent))
        return done(out, exit_code=0, stdout=listing)
    finally:
        session.close()


def _transfer_failed(cluster: Cluster, node: Node, tr: TransferResult, out: DeployOutcome,
                     emit: OnProgress, started: float) -> DeployResult | None:
    """The node's result when the transfer failed or a Ctrl-C came during it, else None."""
    if not tr.ok:
        full = disk_full(tr) or (tr.exit_code == 11 and apply.out_of_space(cluster, node,
                                                                           out.dest))
        if full:
            apply.remove_partials(cluster, node, out.dest)
        return apply.rsync_failed(node, tr, out, emit, started, full=full)
    if cancel.cancelled():
        message = (f"{cancel.INTERRUPTED} after the transfer: the new files are in place, but"
                   " not committed (after commands not run); the next deploy completes it")
        emit(DeployEvent(node.id, "failed", message=message))
        return replace(failure(node.id, NodeErrorKind.INTERRUPTED, message,
                               time.monotonic() - started), outcome=out)
    return None

