"""Rendering results for people (text, Rich tables) and for scripts (JSON).

Node output is untrusted: terminal escape sequences and control characters are made
visible (`\\x1b`) instead of being replayed to the user's terminal.
"""

from __future__ import annotations

import re
from typing import IO, Any

from skeleton_app.results import ClusterResult, gather_output, group_errors, group_exit_codes

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def sanitize(text: str) -> str:
    """Make control characters (ESC, BEL, CR, C1 controls...) visible; keep \\n and \\t."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def exec_text(result: ClusterResult, out: IO[str]) -> None:
    """clush -b style: each distinct output once under its folded node set, then exit codes
    and errors, one line per group."""
    for nodes, text in gather_output(result):
        if not text:
            continue
        out.write(f"---------------- {nodes} ----------------\n")
        body = sanitize(text)
        out.write(body if body.endswith("\n") else body + "\n")
    codes = group_exit_codes(result)
    if len(codes) > 1 or (codes and codes[0][0] != 0) or result.errors:
        for code, nodes in codes:
            out.write(f"{nodes}: exit {code}\n")
    for nodes, message in group_errors(result):
        out.write(f"{nodes}: {sanitize(message)}\n")


def stream_line(out: IO[str], node: str, stream: str, line: str) -> None:
    prefix = f"{node}: " if stream == "stdout" else f"{node} [err]: "
    out.write(prefix + sanitize(line) + "\n")
    out.flush()


def console(file: IO[str] | None = None) -> Any:
    import sys

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
