"""`deploy.strategy: releases` (Capistrano's `releases/` and `current`): what it changes in a
deploy's plan, and the node-side steps (payloads/releases.sh; its header is the protocol).

Per node, a releases deploy is the in-place deploy's steps (lock, digest, begin, restart,
after commands, commit: see the package docstring) with the transfer going somewhere else:

1. `prepare`: make `<app_dir>/releases/<ID>/` (ID = UTC time to the millisecond + 8 hex of the
   tree digest, the same on every node of one deploy, so `rollback --to ID` names one deploy
   cluster-wide); learn the release `current` points to (the previous one).
2. rsync into the new release with `--link-dest=<previous release>`: unchanged files become
   hard links to the previous release's, so a release costs only what changed.
3. `link`: the shared paths (below) become symlinks in the release.
4. `deploy.after` commands run in the release.
5. `switch`: the digest is written to the release (`.skeleton-release`), then `current` is
   pointed at it by renaming a temporary symlink over it (atomic: a reader sees the old
   release or the new, never none); then releases beyond `deploy.keep_releases` are pruned,
   never the new one nor the one it replaced (the rollback target).
6. `commit`: the node's digest (`<app_dir>/.skeleton-deploy/digest`) as in place: a no-change
   deploy stays one round trip.

Any failure or Ctrl-C before the switch removes the half-built release (`abort`) and leaves
`current` untouched; the switch and what follows run to their end once begun.

Shared paths stay at the app dir, each release links to them (`<release>/.venv ->
<app_dir>/.venv`, and `.skeleton-deploy`, the models and logs dirs, and `config.yaml` when the
node has one and the tree does not). Why not `<app_dir>/shared/`: every path the rest of the
tool and the guide use (bootstrap's `<app_dir>/.venv`, `cluster models`, `cluster logs`, the
status probe, the daemon's pid, lock and log files, the /health token) stays exactly where it
is, so nothing else changes and a node moves between strategies without a migration. They
are excluded from the transfer (a `models/` in the tree never lands in a release). The daemon
runs in `<app_dir>/current` (`layout.run_dir`; a systemd unit needs
`WorkingDirectory=<app_dir>/current`).

Every release name read from a node is checked against `RELEASE_ID_RE` (on the node, by the
script, and here): a hostile `releases/` entry (a symlink, a name with spaces or `..`) is
never followed, listed or deleted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from skeleton_app import cancel, layout, payloads
from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.errors import NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.ops.deploy.outcome import DeployOutcome
from skeleton_app.ops.deploy.plan import STATE_DIR, DeployPlan, ReleasePlan
from skeleton_app.payloads import framing
from skeleton_app.results import NodeResult, failure
from skeleton_app.ssh.runner import RunOptions
from skeleton_app.transfers import DEFAULT_PARTIAL_DIR
from skeleton_app.transfers.tree import TreeDigest

RELEASE_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{9}Z-[0-9a-f]{8}\Z")
RELEASE_FILE = ".skeleton-release"  # in each release: its digest lines
NODE_CONFIG = "config.yaml"  # the daemon's default config: shared when the tree has none
SCRIPT_TIMEOUT = 120.0  # prepare/link/switch/abort/list: file system work, pruning included

DeployResult = NodeResult[DeployOutcome]


@dataclass(frozen=True, slots=True)
class Staged:
    """A release being built on one node: its ID, its directory, and the release `current`
    pointed to before (None: the node's first release)."""

    id: str
    dir: str
    previous: str | None


def shared_paths(settings: Settings) -> tuple[str, ...]:
    """The paths every release links to at the app dir (relative models/logs dirs only: an
    absolute one is reached from anywhere)."""
    names = [".venv", STATE_DIR]
    for d in (settings.app.models_dir, settings.app.logs_dir):
        d = d.strip("/") if not d.startswith("/") else ""
        if d and d not in names:
            names.append(d)
    return (*names, NODE_CONFIG + "?")


def plan_releases(p: DeployPlan, settings: Settings) -> DeployPlan:
    """`p` for the releases strategy (unchanged for in-place): the shared paths and the
    release's digest file are kept out of the transfer and the digest; no protect filters
    (every release is a fresh directory, --delete has nothing of ours to spare)."""
    if settings.deploy.strategy != "releases":
        return p
    shared = shared_paths(settings)
    # Anchored and without a trailing slash: they must match the symlinks in a release too.
    keep_out = tuple(f"/{name.rstrip('?')}" for name in shared if not name.endswith("?"))
    exclude = (*p.exclude, *keep_out, f"/{RELEASE_FILE}")
    return replace(p, exclude=exclude, filters=(),
                   digest_excludes=(*exclude, f"{DEFAULT_PARTIAL_DIR}/"),
                   release=ReleasePlan(keep=settings.deploy.keep_releases, shared=shared))


def name_release(p: DeployPlan, tree: TreeDigest, now: datetime | None = None) -> DeployPlan:
    """`p` with its release ID: UTC time to the millisecond, then 8 hex of the tree digest
    (IDs sort by time; two deploys of one tree differ by their time)."""
    if p.release is None:
        return p
    when = (now or datetime.now(UTC)).astimezone(UTC)
    stamp = when.strftime("%Y%m%dT%H%M%S") + f"{when.microsecond // 1000:03d}Z"
    release_id = f"{stamp}-{tree.hex[:8]}"
    assert RELEASE_ID_RE.match(release_id), release_id
    return replace(p, release=replace(p.release, id=release_id))


def valid_id(release_id: str) -> bool:
    return RELEASE_ID_RE.match(release_id) is not None


def current_dir(app_dir: str) -> str:
    return f"{app_dir.rstrip('/')}/{layout.CURRENT}"


def release_dir(app_dir: str, release_id: str) -> str:
    return f"{app_dir.rstrip('/')}/{layout.RELEASES_DIR}/{release_id}"


# ------------------------------------------------------------------ the node-side steps


def run_script(cluster: Cluster, node: Node, *args: str,
               cancellable: bool = True) -> NodeResult[Any]:
    """Run releases.sh with `args` on `node` (ACTION APP_DIR ...)."""
    command, script = payloads.invocation("releases.sh", *args)
    return cluster.connector.run(node, command, RunOptions(
        timeout=SCRIPT_TIMEOUT, stdin=script, cancellable=cancellable))


def script_error(r: NodeResult[Any]) -> str:
    """Why a releases.sh run failed, in one line."""
    if r.error_kind is not None:
        return r.summary()
    said = framing.parse(r.stdout).get("error")
    if said:
        return said
    tail = r.stderr.strip().splitlines()
    return tail[-1] if tail else f"releases.sh exited {r.exit_code}"


def prepare(cluster: Cluster, node: Node, app_dir: str, rp: ReleasePlan) -> Staged | str:
    """Make the node's new release directory: the Staged release, or why not."""
    r = run_script(cluster, node, "prepare", app_dir, rp.id)
    if not r.ok:
        return f"cannot make release {rp.id}: {script_error(r)}"
    previous = framing.parse(r.stdout).get("previous") or None
    if previous is not None and not valid_id(previous):
        previous = None  # never used in a path unless it has the strict form
    return Staged(rp.id, release_dir(app_dir, rp.id), previous)


def link_dest(app_dir: str, staged: Staged) -> str | None:
    """rsync's --link-dest: the previous release (unchanged files become hard links)."""
    return release_dir(app_dir, staged.previous) if staged.previous else None


def link(cluster: Cluster, node: Node, app_dir: str, staged: Staged, rp: ReleasePlan,
         out: DeployOutcome, started: float) -> DeployResult | None:
    """Link the shared paths into the release; the node's failure, or None."""
    r = run_script(cluster, node, "link", app_dir, staged.id, *rp.shared)
    if r.ok:
        return None
    return _failed(node, f"cannot link the shared paths into release {staged.id}:"
                   f" {script_error(r)}", r, out, started)


def switch(cluster: Cluster, node: Node, app_dir: str, staged: Staged, rp: ReleasePlan,
           digest: Sequence[str], out: DeployOutcome,
           started: float) -> tuple[DeployResult | None, tuple[str, ...]]:
    """Point `current` at the release and prune: (the node's failure or None, the pruned
    IDs). A Ctrl-C that came before is a failure (nothing switched); once begun, the switch
    runs to its end."""
    if cancel.cancelled():
        return replace(failure(node.id, NodeErrorKind.INTERRUPTED, cancel.INTERRUPTED,
                               time.monotonic() - started), outcome=out), ()
    r = run_script(cluster, node, "switch", app_dir, staged.id, str(rp.keep),
                   staged.previous or "-", *digest, cancellable=False)
    frame = framing.parse(r.stdout)
    if frame.get("switched") != staged.id:
        return _failed(node, f"cannot switch current to release {staged.id}:"
                       f" {script_error(r)}", r, out, started), ()
    return None, tuple(x for x in frame.all("pruned") if valid_id(x))


def abort(cluster: Cluster, node: Node, app_dir: str, staged: Staged,
          failed: DeployResult) -> DeployResult:
    """Remove the half-built release (whatever went wrong, Ctrl-C included) and say so in the
    node's result: `current` was never switched."""
    r = run_script(cluster, node, "abort", app_dir, staged.id, cancellable=False)
    kept = staged.previous or "no release"
    note = (f"release {staged.id} removed, current unchanged ({kept})" if r.ok
            else f"release {staged.id} not removed ({script_error(r)}), current unchanged")
    if failed.error_kind == NodeErrorKind.INTERRUPTED:
        return replace(failed, error=f"{cancel.INTERRUPTED} before the switch: {note}")
    if failed.error is not None:
        return replace(failed, error=f"{failed.error}; {note}")
    outcome = failed.outcome
    if outcome is not None and outcome.message:
        outcome = replace(outcome, message=f"{outcome.message}; {note}")
    return replace(failed, stderr=failed.stderr + note + "\n", outcome=outcome)


def _failed(node: Node, message: str, r: NodeResult[Any], out: DeployOutcome,
            started: float) -> DeployResult:
    if r.error_kind is not None:
        return replace(failure(node.id, r.error_kind, message, time.monotonic() - started),
                       outcome=out)
    return NodeResult(node=node.id, exit_code=r.exit_code or 1, stderr=message + "\n",
                      duration=time.monotonic() - started,
                      outcome=replace(out, message=message))
