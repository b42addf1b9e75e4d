"""The common form of `skeleton cluster exec`, read without Click (warm mode's served exec,
`keeper/served.py`):

    skeleton [-c PATH] cluster exec [-n SPEC] [--role R] [--exclude SPEC] [-c PATH]
             [--fanout N] [--timeout S] [--format F] [--json] [--] COMMAND...

Anything else, or anything this reader is not sure about, is None: the Click CLI reads it
and reports errors in its words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from skeleton_app.config import MAX_SECONDS

_VALUE_OPTIONS = {"-n": "nodes", "--node": "nodes", "--role": "roles", "--exclude": "exclude",
                  "-c": "config", "--config": "config", "--fanout": "fanout",
                  "--timeout": "timeout", "--format": "format"}
_FORMATS = ("table", "plain", "tsv", "json")


@dataclass(slots=True)
class ExecArgs:
    """A `cluster exec` command line as the Click command would read it."""

    words: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    config: str | None = None
    fanout: int | None = None
    timeout: float | None = None
    format: str | None = None
    as_json: bool = False


def parse(argv: Sequence[str]) -> ExecArgs | None:
    """`argv` (without the program name) as an exec command, None when it is anything else
    (or anything this reader is not sure about: Click then reads it)."""
    args = list(argv)
    root_config = None
    if len(args) >= 2 and args[0] in ("-c", "--config"):
        root_config, args = args[1], args[2:]
    if args[:2] != ["cluster", "exec"]:
        return None
    out = ExecArgs(config=root_config)
    rest = args[2:]
    i = 0
    while i < len(rest):
        token = rest[i]
        i += 1
        if token == "--":
            out.words.extend(rest[i:])
            break
        if not token.startswith("-") or token == "-":
            out.words.append(token)
            continue
        if token == "--json":
            out.as_json = True
            continue
        name, eq, value = token.partition("=")
        if name not in _VALUE_OPTIONS or (eq and not name.startswith("--")):
            return None
        if not eq:
            if i >= len(rest):
                return None
            value = rest[i]
            i += 1
        if not _store(out, _VALUE_OPTIONS[name], value):
            return None
    if not " ".join(out.words).strip():
        return None
    return out


def _store(out: ExecArgs, key: str, value: str) -> bool:
    """Store one option's value; False when Click would refuse it (it then says why)."""
    if key in ("nodes", "roles", "exclude"):
        getattr(out, key).append(value)
    elif key == "config":
        out.config = value  # the command's --config wins over the root's, as in Click
    elif key == "fanout":
        # isdecimal, not isdigit: int() refuses "²", which isdigit lets through
        if not value.strip().isdecimal() or int(value) < 1:
            return False
        out.fanout = int(value)
    elif key == "timeout":
        try:
            number = float(value)
        except ValueError:
            return False
        if not (math.isfinite(number) and 0 < number <= MAX_SECONDS):
            return False
        out.timeout = number
    elif key == "format":
        if value not in _FORMATS:
            return False
        out.format = value
    return True
