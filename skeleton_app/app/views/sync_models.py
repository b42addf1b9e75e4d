"""Rendering sync-models for people: live progress per target, and the summary table.

Reads the typed `SyncOutcome` of each node (never string keys). Node-supplied text goes
through `sanitize` like all node output.
"""

from __future__ import annotations

from typing import IO, Any

from skeleton_app.app.views.common import console, live_display, sanitize
from skeleton_app.ops.sync_models import SyncOutcome, SyncProgress
from skeleton_app.ops.sync_models.outcome import size_text
from skeleton_app.results import ClusterResult


def summary_rows(result: ClusterResult[SyncOutcome]) -> list[list[str]]:
    """Rows for a summary table: node, status, bytes moved, time, rate, how (or why not)."""
    rows = []
    for node, r in result.items():
        out = r.outcome
        status = "failed" if r.error_kind is not None or out is None else out.status
        if r.error_kind is not None:
            how = r.summary()
        elif r.exit_code != 0:
            how = r.stderr.strip()
        else:
            how = ("; ".join(out.via) if out is not None else "") or "-"
        if out is None:
            rows.append([node, status, "-", "-", "-", how])
            continue
        # Hops routed around; a relay's own line names them already.
        rerouted = [cause for cause in out.rerouted if cause not in how]
        if rerouted:
            how += f"; routed around: {'; '.join(rerouted)}"
        if out.repaired:
            how += f"; repaired: {', '.join(out.repaired[:3])}"
            how += f" and {len(out.repaired) - 3} more" if len(out.repaired) > 3 else ""
        rows.append([
            node, status, size_text(out.moved) if out.moved else "-",
            f"{out.seconds:.1f}s" if out.seconds else "-",
            f"{size_text(out.rate)}/s" if out.rate else "-", how,
        ])
    return rows


class SyncModelsProgress:
    """sync-models progress per target on stderr: Rich bars on a terminal (`live_display`:
    stdout a terminal too, format `table`), otherwise one line per event except the frequent
    transfer/preflight/verify ticks. Use as a context manager
    and pass `update` as the sync's `on_progress`; with `enabled=False` (--json) it is silent.
    """

    def __init__(self, *, enabled: bool, file: IO[str] | None = None):
        import sys

        self.enabled = enabled
        self.file = file or sys.stderr
        self.tty = enabled and live_display(self.file)
        self._progress: Any = None  # a rich.progress.Progress, imported only on a terminal
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> SyncModelsProgress:
        if self.tty:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TextColumn("{task.fields[state]}"),
                console=console(self.file))
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, event: SyncProgress) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            if event.phase not in ("transfer", "preflight", "verify"):
                self.file.write(f"{event.node}: {sanitize(event.message or event.phase)}\n")
                self.file.flush()
            return
        task = self._tasks.get(event.node)
        if task is None:
            task = self._progress.add_task(event.node, total=event.total or None, state="")
            self._tasks[event.node] = task
        self._progress.update(task, completed=event.done, total=event.total or None,
                              state=sanitize(event.message or event.phase))
