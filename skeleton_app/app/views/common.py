"""Rendering results for people (text, Rich tables) and for scripts (JSON).

Node output is untrusted: terminal escape sequences and control characters are made
visible (`\\x1b`) instead of being replayed to the user's terminal.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any

from skeleton_app.results import ClusterResult, gather_output, group_errors, group_exit_codes

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def sanitize(text: str) -> str:
    """Make control characters (ESC, BEL, CR, C1 controls...) visible; keep \\n and \\t."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def exec_text(result: ClusterResult[Any], out: IO[str]) -> None:
    """clush -b style: each distinct output once under its folded node set, then exit codes
    and errors, one line per group."""
    for nodes, text in gather_output(result):
        out.write(f"---------------- {nodes} ----------------\n")
        body = sanitize(text)
        out.write(body if body.endswith("\n") else body + "\n")
    # All exited 0 and nothing broke: no exit-code lines (and no folding to pay for).
    if result.nonzero or result.errors:
        for code, nodes in group_exit_codes(result):
            out.write(f"{nodes}: exit {code}\n")
    error_lines(result, out)


def error_lines(result: ClusterResult[Any], out: IO[str]) -> None:
    """One line per group of nodes that never ran or broke: `linux-[01-02]: kind: reason`."""
    for nodes, message in group_errors(result):
        out.write(f"{nodes}: {sanitize(message)}\n")


def stream_line(out: IO[str], node: str, stream: str, line: str) -> None:
    prefix = f"{node}: " if stream == "stdout" else f"{node} [err]: "
    out.write(prefix + sanitize(line) + "\n")
    out.flush()


class NodeLines:
    """Lines streamed from many nodes at once (`logs --follow`): each whole line as
    `node: line` on `out`, a node's failure as `node: message` on `err`. Thread-safe: pass
    `line` and `error` as the callbacks."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._lock = threading.Lock()

    def line(self, node: str, data: bytes) -> None:
        with self._lock:
            stream_line(self.out, node, "stdout", data.decode("utf-8", "replace"))

    def error(self, node: str, message: str) -> None:
        with self._lock:
            self.err.write(f"{node}: {sanitize(message)}\n")
            self.err.flush()


def preload_tables() -> None:
    """Import Rich's table machinery in the background: a command that will draw a table
    after its network work (deploy, status) then pays the ~30 ms of imports while it waits
    for the nodes instead of after them."""
    def load() -> None:
        import rich.console
        import rich.table
        import rich.text  # noqa: F401

    threading.Thread(target=load, daemon=True, name="preload-rich").start()


def console(file: IO[str] | None = None) -> Any:
    from rich.console import Console  # Rich costs import time: only when a table is drawn

    target = file or sys.stdout
    # Piped output (logs, `| grep`) gets a wide fixed width: a row per node, never folded.
    width = None if target.isatty() else 200
    return Console(file=file, highlight=False, soft_wrap=False, width=width)


def table(title: str | None, columns: list[str], rows: list[list[str]], *,
          file: IO[str] | None = None) -> None:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, show_lines=False, header_style="bold")
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*[Text(sanitize(c)) for c in row])
    console(file).print(t)


def status_json(result: ClusterResult[Any],
                registry: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """`cluster status --json`: the result, each node's `data` holding its probed status and,
    with a registry, what the registry knows of it (heartbeat, code version)."""
    data = result.to_dict()
    for node_id, entry in data["nodes"].items():
        st = result[node_id].data.get("status")
        entry["data"] = {"status": st.as_dict() if st else None,
                         "registry": (registry or {}).get(node_id)}
    return json.dumps(data, indent=2, default=str, ensure_ascii=False)
