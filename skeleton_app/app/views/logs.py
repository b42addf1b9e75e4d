"""Rendering a `cluster logs` collect for people: a row per node (lines, sources, state),
then where the files went. Node-supplied text goes through `sanitize` like all node output.
"""

from __future__ import annotations

from typing import IO

from skeleton_app.app.views.common import table
from skeleton_app.ops.logs import MERGED, LogsOutcome
from skeleton_app.results import ClusterResult, NodeResult


def summary_rows(result: ClusterResult[LogsOutcome]) -> list[list[str]]:
    """Rows for the table: node, lines, sources, state (each source not read whole named)."""
    return [_row(node, r) for node, r in result.items()]


def _row(node: str, r: NodeResult[LogsOutcome]) -> list[str]:
    o = r.outcome
    sources = o.sources if o is not None else ()
    state = "ok" if r.ok else r.summary() if r.error_kind else (r.stderr.strip() or "failed")
    if o is not None and o.missing and r.ok:
        state = "ok; " + "; ".join(f"{s.name}: {s.status}" for s in o.missing)
    return [node, str(o.lines if o is not None else 0), str(len(sources)), state]


def logs_text(result: ClusterResult[LogsOutcome], out: IO[str], *, out_dir: str) -> None:
    """The summary table, then where the files are."""
    table(None, ["node", "lines", "sources", "state"], summary_rows(result), file=out)
    out.write(f"written to {out_dir}/ (merged: {out_dir}/{MERGED})\n")
