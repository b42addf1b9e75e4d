"""Rendering `cluster copy` and `cluster fetch` for people: a live line per node while the
bytes move (on a terminal only), then a row per node and the totals. Node-supplied text
(paths, messages) goes through `sanitize` like all node output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, Any

from skeleton_app.app.views.common import format_bytes, sanitize, table
from skeleton_app.app.views.node_bars import NodeBars
from skeleton_app.nodes import Node
from skeleton_app.ops.copy import CopyOutcome, TransferEvent
from skeleton_app.ops.fetch import FetchOutcome
from skeleton_app.results import ClusterResult, NodeResult

_PHASES = {"copy": "copying", "fetch": "fetching", "done": "done", "failed": "FAILED"}


class TransferProgress(NodeBars):
    """One line per node: a bar (copy: rsync's percent; fetch: no total is known, so the
    bar fills when the node is done), phase, files, bytes. Draws only on a terminal (stderr
    by default): pipes and `--json` stay clean. Pass `update` as the operation's
    `on_progress` (`app.progress.live` does)."""

    def __init__(self, nodes: Sequence[Node], file: IO[str] | None = None, *,
                 enabled: bool = True):
        super().__init__(nodes, file, enabled=enabled)

    def update(self, event: TransferEvent) -> None:
        detail = f"{event.files} files" if event.files else ""
        if event.bytes is not None:
            detail += f" {format_bytes(event.bytes)}"
        if event.phase == "failed" and event.message:
            detail = sanitize(event.message)[:60]
        self._set(event.node, 100 if event.phase == "done" else event.percent,
                  _PHASES.get(event.phase, event.phase), detail.strip())


def _state(r: NodeResult[Any], message: str | None) -> str:
    if r.error_kind is not None:
        return f"✗ {r.error_kind.value}: {r.error}"
    if not r.ok:
        return f"✗ exit {r.exit_code}: {message or (r.stderr.strip().splitlines() or [''])[-1]}"
    return "✓"


def _copied(r: NodeResult[CopyOutcome]) -> str:
    # rsync names a file when it starts sending it: on a node that failed or was
    # interrupted, that many were begun and at most that many are in place (none half-written).
    files = r.outcome.files if r.outcome is not None else 0
    return str(files) if r.ok or not files else f"≤{files}"


def copy_text(result: ClusterResult[CopyOutcome], out: IO[str]) -> None:
    """A row per node (state, files written, bytes sent, time), then the totals: the files
    of the nodes that succeeded (a failed node's count is only an upper bound)."""
    rows = []
    files = sent = 0
    for node, r in result.items():
        o = r.outcome
        files += o.files if o is not None and r.ok else 0
        sent += o.bytes_sent if o is not None else 0
        rows.append([node, _state(r, o.message if o is not None else None), _copied(r),
                     format_bytes(o.bytes_sent if o is not None else 0), f"{r.duration:.2f}s"])
    table(None, ["node", "result", "files", "bytes sent", "time"], rows, file=out)
    out.write(f"{len(result.ok)}/{len(result)} node(s) ok; {files} file(s) written,"
              f" {format_bytes(sent)} sent, {result.duration:.2f}s\n")


def fetch_text(result: ClusterResult[FetchOutcome], out: IO[str], *, local_dir: str) -> None:
    """A row per node (state, files, bytes, skipped, time), then where the files went."""
    rows = []
    for node, r in result.items():
        o = r.outcome
        rows.append([node, _state(r, o.message if o is not None else None),
                     str(o.files if o is not None else 0),
                     format_bytes(o.bytes if o is not None else 0),
                     str(o.skipped_total if o is not None else 0), f"{r.duration:.2f}s"])
    table(None, ["node", "result", "files", "bytes", "skipped", "time"], rows, file=out)
    out.write(f"{len(result.ok)}/{len(result)} node(s) ok; written to {local_dir}/<node>/\n")


def skipped_lines(result: ClusterResult[FetchOutcome]) -> list[str]:
    """One warning per member a node's fetch skipped (symlinks are never followed nor
    recreated), for stderr."""
    lines = []
    for node, r in result.items():
        o = r.outcome
        if o is None:
            continue
        for item in o.skipped:
            lines.append(f"{node}: skipped {item}: only files and directories are fetched")
        more = o.skipped_total - len(o.skipped)
        if more > 0:
            lines.append(f"{node}: ... and {more} more skipped")
    return [sanitize(line) for line in lines]
