"""`cluster exec` for people: each distinct output once under its folded node set (clush -b
style), then exit codes and errors; for parsers (`--format tsv`) a row per line. (`--stream`
lines go through `common.stream_line`, which `logs --follow` shares.)"""

from __future__ import annotations

from typing import IO, Any

from skeleton_app.app.views.common import error_lines, sanitize, table_format, tsv_field
from skeleton_app.results import ClusterResult, gather_output, group_exit_codes


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


def exec_tsv(result: ClusterResult[Any], out: IO[str]) -> None:
    """`--format tsv`, for parsers (pdsh's `node: line`, typed): a header, then a row per
    line of output (`node, stdout|stderr, line`), per non-zero exit (`node, exit, code`)
    and per error (`node, kind, message`); tabs, newlines and backslashes escaped."""
    out.write("node\tstream\ttext\n")
    for r in result.values():
        rows = [("stdout", line) for line in _lines(r.stdout)]
        rows += [("stderr", line) for line in _lines(r.stderr)]
        if r.error_kind is not None:
            rows.append((r.error_kind.value, r.error or ""))
        elif r.exit_code:
            rows.append(("exit", str(r.exit_code)))
        out.writelines(f"{tsv_field(r.node)}\t{stream}\t{tsv_field(text)}\n"
                       for stream, text in rows)


def _lines(text: str) -> list[str]:
    """A node's text cut at "\n" (a trailing "\r" of CRLF dropped): not `str.splitlines`,
    which cuts at a lone CR (a progress bar), \x0b, \x0c, \x1c-\x1e, \x85, U+2028/9 too,
    each then a row of its own where `exec_text` shows one line with the control visible."""
    if not text:
        return []
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def exec_view(result: ClusterResult[Any], out: IO[str]) -> None:
    """What `cluster exec` prints, for every front end: rows for `--format tsv`, else the
    blocks of `exec_text`."""
    (exec_tsv if table_format(out) == "tsv" else exec_text)(result, out)
