"""Rendering `deploy --diff` for people: per node, each file a deploy would change, with its
unified diff (text), or one line saying why none is shown (binary, too large, refused,
deleted). Diff text holds node file content: it goes through `sanitize` like all node output
(a planted escape sequence is shown as `\\x1b`, never replayed). Colour only on a terminal.
"""

from __future__ import annotations

from typing import IO

from skeleton_app.app.views.common import sanitize
from skeleton_app.ops.deploy import NodeDiff

_LABELS = {"new": "new", "deleted": "deleted", "binary": "binary", "too-large": "too large",
           "refused": "refused", "changed": "changed"}
_COLOURS = {"+": "\x1b[32m", "-": "\x1b[31m", "@": "\x1b[36m"}
_RESET = "\x1b[0m"


def diff_text(node: str, diff: NodeDiff, out: IO[str], *, colour: bool | None = None) -> None:
    """One node's diff: a header line, then per file its diff or a one-line reason."""
    if colour is None:
        isatty = getattr(out, "isatty", None)
        colour = bool(isatty is not None and isatty())
    files = diff.files
    same = f", {diff.same} with the same content (times only)" if diff.same else ""
    out.write(f"================ {node}: {len(files)} file(s) would change{same}"
              " ================\n")
    if diff.error is not None:
        out.write(f"  {sanitize(diff.error)}\n")
        return
    for f in files:
        path = sanitize(f.path)
        if f.diff:
            for line in sanitize(f.diff).splitlines(keepends=True):
                start = _COLOURS.get(line[:1]) if colour and not line.startswith(
                    ("--- ", "+++ ")) else None
                out.write(f"{start}{line.rstrip(chr(10))}{_RESET}\n" if start else line)
            continue
        message = f": {sanitize(f.message)}" if f.message else ""
        out.write(f"{_LABELS.get(f.kind, f.kind)} {path}{message}\n")
