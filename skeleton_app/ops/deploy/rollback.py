"""`cluster rollback` and `cluster releases` (`deploy.strategy: releases`; the layout is in
ops/deploy/releases.py).

`rollback(to=None)`: per node, under the deploy lock (a rollback never races a deploy),
point `current` at the release before the current one, or at `to`, and make that release's
digest the node's digest (a later deploy of the rolled-back-from tree is no no-op);
`restart=True` then restarts the daemon there, so it runs the old code. An unknown `to`:
UsageError (exit 2) before anything changes when no node that answered has it, else exit 1 for
each node that lacks it, in one line naming that node's releases.

`list_releases()`: each node's releases, oldest first, and which is current.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from skeleton_app import cancel
from skeleton_app.cluster import Cluster
from skeleton_app.errors import NodeError, NodeErrorKind, UsageError
from skeleton_app.nodes import Node
from skeleton_app.ops.deploy.lock import Busy, HelperFailed, HelperTalk, drive, helper_command
from skeleton_app.ops.deploy.plan import LOCK_WAIT, _owner
from skeleton_app.ops.deploy.releases import run_script, script_error, valid_id
from skeleton_app.payloads import framing
from skeleton_app.results import ClusterResult, NodeResult, failure, jsonable

OnResult = Callable[[NodeResult[Any]], None]


@dataclass(frozen=True, slots=True)
class Release:
    """One release on a node: its ID, the code version of its digest, when it was made."""

    id: str
    version: str | None = None
    deployed_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "deployed_at": self.deployed_at}


@dataclass(frozen=True, slots=True)
class ReleasesOutcome:
    """A node's releases, oldest first, and the current one (None: `current` names none)."""

    current: str | None
    releases: tuple[Release, ...] = ()

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.releases)

    def as_dict(self) -> dict[str, Any]:
        return {"current": self.current, "releases": [r.as_dict() for r in self.releases]}


@dataclass(frozen=True, slots=True)
class RollbackOutcome:
    """A node's rollback: the release `current` pointed to before and after, the daemon's
    restart (when asked for), and why it failed."""

    previous: str | None = None
    current: str | None = None
    daemon: Mapping[str, object] | None = None
    releases: tuple[str, ...] = field(default=())
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"previous": self.previous, "current": self.current}
        if self.daemon is not None:
            out["daemon"] = dict(self.daemon)
        if self.message is not None:
            out["message"] = self.message
            out["releases"] = list(self.releases)
        return out


# ------------------------------------------------------------------ listing


def list_releases(cluster: Cluster, nodes: Sequence[Node], *, fanout: int | None = None,
                  on_result: OnResult | None = None) -> ClusterResult[ReleasesOutcome]:
    """Each node's releases and which one is current (one round trip per node)."""
    return cluster.map(lambda node: _list_one(cluster, node), nodes, fanout=fanout,
                       operation="releases", on_result=on_result)


def _list_one(cluster: Cluster, node: Node) -> NodeResult[ReleasesOutcome]:
    started = time.monotonic()
    r = run_script(cluster, node, "list", node.app_dir)
    if not r.ok:
        if r.error_kind is not None:
            return r
        message = script_error(r)
        return NodeResult(node=node.id, exit_code=r.exit_code or 1, stderr=message + "\n",
                          duration=time.monotonic() - started)
    frame = framing.parse(r.stdout)
    found = []
    for line in frame.all("release"):
        f = framing.fields("release", line)
        if valid_id(f.get("release", "")):  # the node's words: checked here too
            found.append(Release(f["release"], f.get("version") or None,
                                 f.get("deployed_at") or None))
    current = frame.get("current") or None
    outcome = ReleasesOutcome(current if current and valid_id(current) else None, tuple(found))
    return replace(r, stdout="", duration=time.monotonic() - started, outcome=outcome)


# ------------------------------------------------------------------ rollback


def rollback(cluster: Cluster, nodes: Sequence[Node], *, to: str | None = None,
             restart: bool = False, lock_wait: float = LOCK_WAIT, fanout: int | None = None,
             on_result: OnResult | None = None) -> ClusterResult[RollbackOutcome]:
    """Switch every node's `current` back (see the module docstring). UsageError (nothing
    changed) for a malformed `to`, or one that no node which answered has."""
    if to is not None:
        if not valid_id(to):
            raise UsageError(f"--to: {to!r} is not a release ID (like 20260102T030405678Z-"
                             "0123abcd; `skeleton cluster releases` lists them)")
        known = list_releases(cluster, nodes, fanout=fanout)
        answered = known.outcomes()
        if answered and not any(to in o.ids for o in answered.values()):
            listed = sorted({i for o in answered.values() for i in o.ids})
            raise UsageError(f"unknown release {to}: no node has it (releases: "
                             f"{', '.join(listed) or 'none'})")
    owner = _owner()
    return cluster.map(lambda node: _rollback_one(cluster, node, to, restart, lock_wait, owner),
                       nodes, fanout=fanout, operation="rollback", on_result=on_result)


def _rollback_one(cluster: Cluster, node: Node, to: str | None, restart: bool,
                  lock_wait: float, owner: str) -> NodeResult[RollbackOutcome]:
    from skeleton_app.ops.daemon import restart_node

    started = time.monotonic()

    def done(out: RollbackOutcome, exit_code: int, stderr: str = "") -> NodeResult[
            RollbackOutcome]:
        return NodeResult(node=node.id, exit_code=exit_code, stderr=stderr,
                          duration=time.monotonic() - started, outcome=out)

    session = cluster.connector.session(node, helper_command(node.app_dir, lock_wait, owner),
                                        what="deploy helper")
    talk = HelperTalk(node.id, lock_wait, max(30.0, 3 * cluster.settings.ssh.connect_timeout))
    try:
        granted = drive(talk.acquire(), session)
        if isinstance(granted, Busy):
            return failure(node.id, NodeErrorKind.LOCAL, f"deploy in progress by"
                           f" {granted.holder} (lock held {lock_wait:g}s later)",
                           time.monotonic() - started)
        if isinstance(granted, HelperFailed):
            message = granted.message or "the node's deploy helper failed"
            return done(RollbackOutcome(message=message), 1, message + "\n")
        drive(talk.own(), session)
        if cancel.cancelled():
            raise NodeError(NodeErrorKind.INTERRUPTED, cancel.INTERRUPTED, node=node.id)
        r = run_script(cluster, node, "rollback", node.app_dir, *([to] if to else []),
                       cancellable=False)
        if r.error_kind is not None:
            return r
        frame = framing.parse(r.stdout)
        ids = tuple(i for i in (frame.get("releases") or "").split() if valid_id(i))
        if not r.ok:
            message = f"{script_error(r)} on {node.id} (its releases: {', '.join(ids) or 'none'})"
            return done(RollbackOutcome(releases=ids, message=message), r.exit_code or 1,
                        message + "\n")
        before, after = frame.get("from"), frame.get("to")
        out = RollbackOutcome(previous=before if before and valid_id(before) else None,
                              current=after if after and valid_id(after) else None)
        if restart:
            d = restart_node(cluster, node)
            facts = jsonable(d.outcome) if d.outcome is not None else {}
            out = replace(out, daemon=facts if isinstance(facts, dict) else {})
            if not d.ok:
                message = f"rolled back, but the daemon's restart failed: {d.summary()}"
                if d.outcome is not None:
                    message = ("rolled back, but the daemon's restart failed: "
                               f"{d.outcome.summary}")
                return done(replace(out, message=message), d.exit_code or 1, message + "\n")
        return done(out, 0)
    finally:
        session.close()
