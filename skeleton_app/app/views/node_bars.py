"""`NodeBars`: a Rich progress display with one line per node (node, bar, phase, detail,
time), shared by the deploy and copy/fetch views. Draws only where `live_display` allows
(stderr and stdout terminals, `--format table`); otherwise nothing is imported or drawn.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO, Any

from skeleton_app.app.views.common import console, live_display
from skeleton_app.nodes import Node


class NodeBars:
    """Use as a context manager; subclasses turn their operation's events into `_set`."""

    def __init__(self, nodes: Sequence[Node], file: IO[str] | None = None, *,
                 enabled: bool = True, force: bool = False, percent: bool = False,
                 phase_width: int = 9):
        target = file or sys.stderr
        self.enabled = force or (enabled and live_display(target))
        self._tasks: dict[str, Any] = {}
        if not self.enabled:
            return  # piped: no display, and no need to import Rich's progress machinery
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        columns = [TextColumn("{task.fields[node]:<16}"), BarColumn(bar_width=24)]
        if percent:
            columns.append(TextColumn("{task.percentage:>3.0f}%"))
        columns += [TextColumn(f"{{task.fields[phase]:<{phase_width}}}"),
                    TextColumn("{task.fields[detail]}"), TimeElapsedColumn()]
        self._progress = Progress(*columns, console=console(target), transient=False)
        for node in nodes:
            self._tasks[node.id] = self._progress.add_task(
                "", total=100, node=node.id, phase="waiting", detail="")

    def __enter__(self) -> NodeBars:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()

    def _set(self, node: str, completed: float | None, phase: str, detail: str) -> None:
        task = self._tasks.get(node)
        if task is not None and self.enabled:
            self._progress.update(task, completed=completed, phase=phase, detail=detail)
