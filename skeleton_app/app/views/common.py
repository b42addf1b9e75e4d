"""Helpers every view shares: making node text safe, the console, the one table builder, the
error lines, and the byte and duration formatters. One module per operation
(`views/exec.py`, `views/status.py`, `views/daemon.py`, `views/bootstrap.py`, ...) holds
what that operation shows.

Node output is untrusted: terminal escape sequences and control characters are made
visible (`\\x1b`) instead of being replayed to the user's terminal.
"""

from __future__ import annotations

import re
import sys
import threading
from typing import IO, Any

from skeleton_app.results import ClusterResult, group_errors

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def sanitize(text: str) -> str:
    """Make control characters (ESC, BEL, CR, C1 controls...) visible; keep \\n and \\t."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


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


# The command's `--format` (set once by the CLI); None: `table` on a terminal, else `plain`.
# `json`: the command prints its JSON instead of its tables (`--json` is its alias); a table
# printed anyway (a command without a JSON form of its own) is a list of objects keyed by
# column.
_FORMAT: str | None = None


def set_format(name: str | None) -> None:
    global _FORMAT
    _FORMAT = name


def table_format(file: IO[str] | None = None) -> str:
    """How tables print to `file`: the `--format` given, else `table` on a terminal and
    `plain` (aligned text, no box drawing) for pipes and files."""
    if _FORMAT is not None:
        return _FORMAT
    return "table" if _isatty(file or sys.stdout) else "plain"


def _isatty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def live_display(file: IO[str] | None = None) -> bool:
    """May a progress bar or a Live display draw on `file` (stderr by default)? Only when
    both it and stdout are terminals and the format is `table`: a pipe, a file, `--json` or
    `--format plain|tsv` get no cursor movement and no bars, just the result."""
    if _FORMAT not in (None, "table"):
        return False
    return _isatty(sys.stdout) and _isatty(file or sys.stderr)


def tsv_field(text: str) -> str:
    # One record per line, one field per tab: tabs and newlines inside a value are escaped.
    return sanitize(text).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def table(title: str | None, columns: list[str], rows: list[list[str]], *,
          file: IO[str] | None = None) -> None:
    """Print a table as the command's format says: Rich's box drawing (`table`, the default
    on a terminal), aligned text (`plain`, the default for pipes and files; the title on its
    own line), `tsv` (a header line then one line per row; tabs, newlines and backslashes
    inside a value escaped as \\t, \\n, \\\\) or `json` (a list of objects keyed by
    column). Every cell is node text: `sanitize`d, and one field whatever it holds."""
    fmt = table_format(file)
    out = file or sys.stdout
    if fmt == "json":
        import json

        out.write(json.dumps([dict(zip(columns, row, strict=True)) for row in rows],
                             indent=2) + "\n")
        return
    if fmt == "tsv":
        for row in [columns, *rows]:
            out.write("\t".join(tsv_field(c) for c in row) + "\n")
        return
    if fmt == "plain":
        if title:  # for a reader; `--format tsv` is the one for parsers
            out.write(sanitize(title) + "\n")
        cells = [[sanitize(c).replace("\n", " ") for c in row] for row in [columns, *rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
        for row in cells:
            out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                      + "\n")
        return
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, show_lines=False, header_style="bold")
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*[Text(sanitize(c)) for c in row])
    console(file).print(t)


# ---- formatters ----------------------------------------------------------------------------

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(size: int | None) -> str:
    """'512MiB', '3.2GiB', '140GiB'; '-' for unknown."""
    if size is None:
        return "-"
    number, unit = _scale(size)
    return f"{_short_number(number)}{unit}"


def format_usage(used: int | None, total: int | None) -> str:
    """'3.2/15GiB': used and total in the total's unit; '-' when the total is unknown."""
    if total is None:
        return "-"
    number, unit = _scale(total)
    factor = total / number if number else 1
    used_text = "?" if used is None else _short_number(used / factor)
    return f"{used_text}/{_short_number(number)}{unit}"


def format_duration(seconds: float | None) -> str:
    """'3d04h', '5h07m', '12m', '40s'; '-' for unknown."""
    if seconds is None:
        return "-"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def _scale(size: int) -> tuple[float, str]:
    number = float(size)
    for unit in _UNITS:
        if abs(number) < 1024 or unit == _UNITS[-1]:
            return number, unit
        number /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _short_number(number: float) -> str:
    # Two significant figures are plenty for a table; below 10 one decimal still says something.
    if number == 0:
        return "0"
    if abs(number) < 10 and round(number, 1) != round(number):
        return f"{number:.1f}"
    return f"{number:.0f}"
