"""`cluster daemon start|stop|restart|status` for people: a row per selected node."""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO

from skeleton_app.app.views.common import sanitize, table
from skeleton_app.nodes import Node
from skeleton_app.ops.daemon import DaemonOutcome
from skeleton_app.results import ClusterResult


def daemon_text(result: ClusterResult[DaemonOutcome], nodes: Sequence[Node],
                out: IO[str]) -> None:
    """A row per selected node: outcome, pid, what happened (nodes a stopped rollout never
    reached say so)."""
    rows = []
    for node in nodes:
        r = result.get(node.id)
        if r is None:
            rows.append([node.id, "-", "", "not reached (rollout stopped)"])
            continue
        if r.error_kind is not None:
            rows.append([node.id, "✗", "", f"{r.error_kind.value}: {r.error}"])
            continue
        outcome = r.outcome
        pid = outcome.pid if outcome is not None else None
        summary = (outcome.summary if outcome is not None else "") or r.summary()
        tail = outcome.log_tail if outcome is not None else ()
        if tail:
            summary += "\n" + "\n".join(f"  | {line}" for line in tail[-10:])
        rows.append([node.id, "✓" if r.ok else "✗", str(pid) if pid else "", summary])
    table(None, ["node", "ok", "pid", "daemon"], rows, file=out)
    for warning in result.warnings:
        out.write(f"warning: {sanitize(warning)}\n")
