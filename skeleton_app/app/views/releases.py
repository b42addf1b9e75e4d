"""`cluster releases` and `cluster rollback` for people: a row per release or per node."""

from __future__ import annotations

from typing import IO

from skeleton_app.app.views.common import table
from skeleton_app.ops.deploy.rollback import ReleasesOutcome, RollbackOutcome
from skeleton_app.results import ClusterResult


def releases_text(result: ClusterResult[ReleasesOutcome], out: IO[str]) -> None:
    """A row per release on each node (newest first), `*` on the current one; a node with
    none, or that failed, says so in one row."""
    rows = []
    for node, r in result.items():
        o = r.outcome
        if o is None or not r.ok:
            rows.append([node, "", "-", "", r.summary()])
            continue
        if not o.releases:
            rows.append([node, "", "-", "", "no releases"])
        for rel in reversed(o.releases):
            rows.append([node, "*" if rel.id == o.current else "", rel.id, rel.version or "-",
                         rel.deployed_at or "-"])
    table(None, ["node", "current", "release", "version", "deployed"], rows, file=out)


def rollback_text(result: ClusterResult[RollbackOutcome], out: IO[str]) -> None:
    """A row per node: from which release to which, the daemon's restart, or why not."""
    rows = []
    for node, r in result.items():
        o = r.outcome
        if r.error_kind is not None or o is None:
            rows.append([node, "✗", "", "", r.summary()])
            continue
        daemon = str(o.daemon.get("summary", "")) if o.daemon else ""
        note = o.message or (f"daemon {daemon}" if daemon else "")
        rows.append([node, "✓" if r.ok else "✗", o.previous or "-", o.current or "-", note])
    table(None, ["node", "ok", "from", "to", "message"], rows, file=out)
