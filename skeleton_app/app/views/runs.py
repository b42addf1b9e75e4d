"""`skeleton runs list|show` for people and scripts: the tables and the JSON of the run
journal (one record per cluster command, with each node's outcome).

The JSON keys are stable (scripts read them; README "Output for scripts and pipes"):

    run:  id, started_at, finished_at (ISO 8601 with offset, or null), who, operation,
          arguments (the command's arguments as journaled), selection (the node specs as
          given), exit_code, duration (seconds), node_count, ok_count, failed_count,
          error_count
    show: the run's keys, plus `nodes`: one object per node, by node id: node, exit_code,
          error_kind (null when it ran), error, duration, stdout_tail, stderr_tail

`runs list --json` prints a list of runs (newest first, no `nodes`), `runs show RUN --json`
one run with its `nodes`. Node text is escaped by JSON itself (`\\u001b`), never replayed.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from skeleton_app.app.views.common import table

if TYPE_CHECKING:
    from skeleton_app.registry import RunRecord
    from skeleton_app.registry.records import RunNodeRecord

RUN_KEYS = ("id", "started_at", "finished_at", "who", "operation", "arguments", "selection",
            "exit_code", "duration", "node_count", "ok_count", "failed_count", "error_count")
NODE_KEYS = ("node", "exit_code", "error_kind", "error", "duration", "stdout_tail",
             "stderr_tail")


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def run_dict(run: RunRecord) -> dict[str, Any]:
    """A run's journal record under the documented keys (RUN_KEYS, in that order)."""
    return {"id": run.id, "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at), "who": run.who,
            "operation": run.operation, "arguments": run.arguments,
            "selection": list(run.selection), "exit_code": run.exit_code,
            "duration": run.duration, "node_count": run.node_count,
            "ok_count": run.ok_count, "failed_count": run.failed_count,
            "error_count": run.error_count}


def node_dict(node: RunNodeRecord) -> dict[str, Any]:
    """One node's outcome in a run (NODE_KEYS, in that order)."""
    return {"node": node.node_id, "exit_code": node.exit_code, "error_kind": node.error_kind,
            "error": node.error, "duration": node.duration, "stdout_tail": node.stdout_tail,
            "stderr_tail": node.stderr_tail}


def runs_json(runs: tuple[RunRecord, ...]) -> str:
    """`runs list --json`: the runs, newest first."""
    return json.dumps([run_dict(r) for r in runs], indent=2)


def run_json(run: RunRecord) -> str:
    """`runs show RUN --json`: the run and every node's outcome."""
    return json.dumps({**run_dict(run), "nodes": [node_dict(n) for n in run.nodes]},
                      indent=2)


def runs_table(runs: tuple[RunRecord, ...], out: IO[str] | None = None) -> None:
    """`runs list`: a row per run, newest first."""
    rows = [[str(r.id), r.started_at.strftime("%Y-%m-%d %H:%M:%S"), r.who, r.operation,
             ",".join(r.selection)[:40], "-" if r.exit_code is None else str(r.exit_code),
             f"{r.ok_count}/{r.node_count}", "-" if r.duration is None else f"{r.duration:.2f}s"]
            for r in runs]
    table(None, ["run", "started", "who", "operation", "selection", "exit", "ok", "took"],
          rows, file=out)


def run_text(run: RunRecord, out: IO[str]) -> None:
    """`runs show`: the run's line, its arguments, then a row per node."""
    out.write(f"run {run.id}: {run.operation} by {run.who} at "
              f"{run.started_at:%Y-%m-%d %H:%M:%S}, exit {run.exit_code}\n")
    out.write(f"arguments: {json.dumps(run.arguments)}\n")
    rows = [[n.node_id, "-" if n.exit_code is None else str(n.exit_code),
             f"{n.error_kind}: {n.error}" if n.error_kind else "",
             "-" if n.duration is None else f"{n.duration:.2f}s",
             (n.stdout_tail or n.stderr_tail).strip()[-60:]] for n in run.nodes]
    table(None, ["node", "exit", "error", "took", "output (tail)"], rows, file=out)
