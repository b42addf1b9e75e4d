"""Rendering deploy results for people: live per-node progress
displays (Rich) and the summaries. Node-supplied text goes through `render.sanitize` like all
node output.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import IO

from skeleton_app.app.views.common import format_bytes, sanitize, table
from skeleton_app.app.views.node_bars import NodeBars
from skeleton_app.nodes import Node
from skeleton_app.ops.deploy import DeployEvent, DeployOutcome
from skeleton_app.results import ClusterResult

_PHASES = {
    "lock": "locking", "stop": "stopping daemon", "sync": "syncing", "after": "after commands",
    "commit": "committing", "start": "starting daemon", "done": "done",
    "unchanged": "up to date", "failed": "FAILED",
}


class DeployProgress(NodeBars):
    """One line per node: phase, a bar of the transfer's percent, files seen, bytes.

    Use as a context manager and pass `update` as the deploy's `on_progress`. Draws only on a
    terminal (stderr by default) while stdout is one too and the format is `table`
    (`live_display`), so pipes, `--json` and `--format plain|tsv` stay clean.
    """

    def __init__(self, nodes: Sequence[Node], file: IO[str] | None = None, *,
                 force: bool = False):
        super().__init__(nodes, file, force=force, percent=True, phase_width=16)

    def update(self, event: DeployEvent) -> None:
        detail = []
        if event.files:
            detail.append(f"{event.files} files")
        if event.bytes is not None:
            detail.append(format_bytes(event.bytes))
        if event.phase == "failed" and event.message:
            detail = [sanitize(event.message)[:60]]
        completed = event.percent
        if event.phase in ("done", "unchanged", "commit", "after", "start"):
            completed = 100
        self._set(event.node, completed, _PHASES.get(event.phase, event.phase),
                  " ".join(detail))


def deploy_text(result: ClusterResult[DeployOutcome], out: IO[str], *,
                list_changes: bool = False, started: float | None = None) -> None:
    """A row per node (result, files changed, bytes sent, time), then the totals; with
    `list_changes` (dry runs) each node's changes first; for `deploy --diff` (outcomes that
    hold a diff) each node's diffs instead (views/deploy_diff.py)."""
    dry = result.operation.endswith("dry-run")
    if list_changes:
        for node, r in result.items():
            if r.outcome is not None and r.outcome.diff is not None:
                from skeleton_app.app.views.deploy_diff import diff_text

                diff_text(node, r.outcome.diff, out)
                continue
            changes = r.outcome.changes if r.outcome is not None else ()
            if not r.ok and not changes:
                continue
            out.write(f"---------------- {node}: {len(changes)} change(s)"
                      f"{' would be made' if dry else ''} ----------------\n")
            for c in changes:
                out.write(f"  {c.item:<11} {sanitize(c.path)}\n")
            more = (r.outcome.changes_total if r.outcome is not None else 0) - len(changes)
            if more > 0:
                out.write(f"  ... and {more} more\n")
    rows = []
    files = sent = 0
    for node, r in result.items():
        o = r.outcome
        changed = o.files_changed if o is not None else 0
        nbytes = o.bytes_sent if o is not None else 0
        files += changed
        sent += nbytes
        if r.error_kind is not None:
            outcome = f"✗ {r.error_kind.value}: {r.error}"
        elif not r.ok:
            message = (o.message if o is not None else None) or (
                r.stderr.strip().splitlines() or [""])[-1]
            outcome = f"✗ exit {r.exit_code}: {message}"
        elif o is not None and o.unchanged:
            outcome = "✓ up to date"
        else:
            outcome = "✓ would change" if dry else "✓ deployed"
        rows.append([node, outcome, str(changed), format_bytes(nbytes), f"{r.duration:.2f}s",
                     (o.version if o is not None else None) or "",
                     (o.release if o is not None else None) or ""])
    columns = ["node", "result", "files changed", "bytes sent", "time", "version", "release"]
    if not any(row[-1] for row in rows):  # deploy.strategy in-place: no releases to name
        columns.pop()
        rows = [row[:-1] for row in rows]
    table(None, columns, rows, file=out)
    elapsed = result.duration if started is None else time.monotonic() - started
    ok = len(result.ok)
    out.write(f"{ok}/{len(result)} node(s) ok; {files} file(s) changed, {format_bytes(sent)} sent,"
              f" {elapsed:.2f}s\n")
    for warning in result.warnings:
        out.write(f"warning: {sanitize(warning)}\n")


