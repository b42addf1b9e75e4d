"""The steps that change a node, once its lock is held: the rsync transfer (writer lock,
progress), the `deploy.after` commands, the daemon's stop/start of a restart, and what a
failed transfer leaves to clean up (holding dirs after a full disk). Each failure becomes the
node's `NodeResult[DeployOutcome]`."""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from skeleton_app.cluster import Cluster
from skeleton_app.nodes import Node
from skeleton_app.ops.daemon import control_node
from skeleton_app.ops.deploy.events import DeployEvent, OnProgress
from skeleton_app.ops.deploy.outcome import MAX_CHANGES_KEPT, AfterRun, DeployOutcome
from skeleton_app.ops.deploy.plan import STATE_DIR, DeployPlan
from skeleton_app.results import NodeResult, failure, jsonable
from skeleton_app.ssh.runner import RunOptions
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

DeployResult = NodeResult[DeployOutcome]


def sync(cluster: Cluster, node: Node, p: DeployPlan, dest: str, emit: OnProgress,
         *, dry_run: bool, state_dir: str | None = None,
         link_dest: str | None = None) -> TransferResult:
    """rsync the source to `dest`, reporting each change and the overall percent.
    `state_dir`: the dir whose .skeleton-deploy holds the writer lock (default `dest`);
    `link_dest`: hard-link unchanged files to this tree on the node (a release)."""
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
    if link_dest is not None:
        opts.append(f"--link-dest={link_dest}")
    # The receiver holds the writer lock for as long as it lives (deploy.sh's `begin` waits
    # for it): it may outlive our session, and so the session's lock, if we are killed.
    writer = None if dry_run else shlex.join(
        ["flock", "-w", "30", f"{state_dir or dest}/{STATE_DIR}", "rsync"])
    ssh = cluster.settings.ssh
    return rsync(
        node, p.source + "/", dest + "/", settings=ssh, exclude=p.exclude, filters=p.filters,
        delete=p.delete, dry_run=dry_run, checksum=p.checksum, rsync_opts=opts,
        io_timeout=int(ssh.op_timeout), on_change=on_change, on_progress=on_progress,
        rsync_path=writer,
    )


def listing(changes: Sequence[FileChange]) -> str:
    """The node's stdout: one `kind path` line per change."""
    return "".join(f"{c.kind} {c.path}\n" for c in changes[:MAX_CHANGES_KEPT])


def run_afters(cluster: Cluster, node: Node, p: DeployPlan, dest: str, out: DeployOutcome,
               emit: OnProgress, started: float) -> tuple[DeployOutcome, DeployResult | None]:
    """Run `deploy.after` in order: the outcome with each run recorded, and the first
    failure as the node's result (None when all succeeded)."""
    for command_line in p.after:
        emit(DeployEvent(node.id, "after", message=command_line))
        r = _run_after(cluster, node, dest, command_line)
        out = replace(out, after=(*out.after, AfterRun(command_line, r.exit_code, r.error)))
        if not r.ok:
            message = f"after command {command_line!r} failed: {r.summary()}"
            emit(DeployEvent(node.id, "failed", message=message))
            result: DeployResult = replace(r, stderr=r.stderr + message + "\n",
                                           outcome=replace(out, message=message),
                                           duration=time.monotonic() - started)
            return out, result
    return out, None


def _run_after(cluster: Cluster, node: Node, dest: str, command_line: str) -> NodeResult[Any]:
    # The command runs exactly as configured, in DEST; SKELETON_NODE_ID tells it where it is.
    line = (f"export SKELETON_NODE_ID={shlex.quote(node.id)}; cd {shlex.quote(dest)} &&"
            f" {command_line}")
    return cluster.connector.run(node, line, RunOptions(
        timeout=cluster.settings.ssh.op_timeout))


def out_of_space(cluster: Cluster, node: Node, dest: str) -> bool:
    """rsync's I/O error came without its message (the receiver's last words can be lost
    when it quits): is `dest`'s file system out of space? Less than 1 MiB left counts."""
    line = f"df -P -B1 -- {shlex.quote(dest)} | awk 'NR == 2 {{ print $4 }}'"
    r = cluster.connector.run(node, line, RunOptions(timeout=30))
    left = r.stdout.strip()
    return r.ok and left.isdigit() and int(left) < 1 << 20


def remove_partials(cluster: Cluster, node: Node, dest: str) -> None:
    """After a disk-full failure, free the space the holding directories took (a later deploy
    will resend): on a full disk, keeping them for a resume would only keep it full."""
    line = shlex.join(["find", dest, "-type", "d", "-name", DEFAULT_PARTIAL_DIR, "-prune",
                       "-exec", "rm", "-rf", "--", "{}", "+"])
    cluster.connector.run(node, line, RunOptions(timeout=60))


def rsync_failed(node: Node, tr: TransferResult, out: DeployOutcome, emit: OnProgress,
                 started: float, *, full: bool = False) -> DeployResult:
    """The node's result for a failed transfer: an error kind when the connection broke or
    the node lacks rsync, else rsync's exit code; `full`: the node's disk is full."""
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
        if out.transfer is not None:  # what reached the holding dirs is not applied
            out = replace(out, transfer=replace(out.transfer, files_changed=0))
    emit(DeployEvent(node.id, "failed", message=message))
    if kind is not None:
        return replace(failure(node.id, kind, message, time.monotonic() - started),
                       stderr=tr.stderr, outcome=out)
    return NodeResult(node=node.id, exit_code=tr.exit_code or 1, stderr=tr.stderr,
                      error=None, duration=time.monotonic() - started,
                      outcome=replace(out, message=message))


def daemon(cluster: Cluster, node: Node, action: str, *,
           cancellable: bool = True) -> tuple[NodeResult[Any], Mapping[str, object]]:
    """Stop or start the node's daemon: its result, and its reply as the outcome records it."""
    r = control_node(cluster, node, action, cancellable=cancellable)
    facts = jsonable(r.outcome) if r.outcome is not None else {}
    return r, facts if isinstance(facts, dict) else {}


def daemon_failed(node: Node, what: str, r: NodeResult[Any], facts: Mapping[str, object],
                  out: DeployOutcome, emit: OnProgress, started: float) -> DeployResult:
    """The node's result when the daemon's stop or start of a restart failed."""
    summary = str(facts.get("summary") or r.summary())
    message = f"daemon {what} failed: {summary}"
    emit(DeployEvent(node.id, "failed", message=message))
    if r.error_kind is not None:
        return replace(r, error=message, outcome=out, duration=time.monotonic() - started)
    return replace(r, exit_code=r.exit_code or 1, stderr=r.stderr + message + "\n",
                   outcome=replace(out, message=message), duration=time.monotonic() - started)
