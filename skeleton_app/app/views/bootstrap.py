"""`cluster bootstrap` for people: a row per node (state, Python, time, message) and a line
per node that did not end with a usable virtualenv."""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO

from skeleton_app.app.views.common import table
from skeleton_app.ops.bootstrap import BootstrapOutcome
from skeleton_app.results import ClusterResult

COLUMNS = ["node", "state", "python", "time", "message"]


def bootstrap_text(result: ClusterResult[BootstrapOutcome], out: IO[str] | None = None) -> None:
    """The summary table on `out` (stdout by default)."""
    table(None, COLUMNS, summary_rows(result), file=out)


def summary_rows(result: ClusterResult[BootstrapOutcome]) -> list[list[str]]:
    """Rows for the summary table: node, state, Python, time, message."""
    rows = []
    for node, r in result.items():
        o = r.outcome
        state = "failed" if r.error_kind is not None or o is None else o.state
        state = state.replace("-", " ")  # "up to date"
        message = r.summary() if r.error_kind is not None else (o.message if o else "")
        python = o.python if o is not None else None
        rows.append([node, state, python or "-", f"{r.duration:.1f}s", message or "-"])
    return rows


def failures(result: ClusterResult[BootstrapOutcome]) -> Iterable[str]:
    """One line per node that did not end with a usable virtualenv."""
    for node, r in result.items():
        if not r.ok:
            o = r.outcome
            text = r.summary() if r.error_kind is not None else str(o.message if o else None)
            yield f"{node}: {text}"
