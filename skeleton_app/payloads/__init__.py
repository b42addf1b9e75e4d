"""The node-side shell payloads and the one loader for them.

Every `*.sh` here runs on a node under `sh` (sent on stdin with `sh -s -- ARGS`, or inline
with `sh -c`). They use only POSIX sh and coreutils: a stock node has nothing else.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def data(name: str) -> bytes:
    """The payload `name` (e.g. "status.sh") as bytes, read once per process."""
    if "/" in name or not name.endswith(".sh"):
        raise ValueError(f"not a payload name: {name!r}")
    return (resources.files(__name__) / name).read_bytes()


def text(name: str) -> str:
    """The payload `name` as text (for `sh -c`)."""
    return data(name).decode("utf-8")
