"""`cluster exec` for people: each distinct output once under its folded node set (clush -b
style), then exit codes and errors. (`--stream` lines go through `common.stream_line`, which
`logs --follow` shares.)"""

from __future__ import annotations

from typing import IO, Any

from skeleton_app.app.views.common import error_lines, sanitize
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
