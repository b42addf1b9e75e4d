"""The one reply framing of the node-side scripts, and its one parser.

A reply is lines on stdout:

    key=value                 a value is the rest of the line (spaces included); keys are
                              lower-case words (`[a-z][a-z0-9_]*`)
    --- begin NAME            a block: every line up to `--- end NAME` is its text, verbatim
    ...                       (a block cut off by a lost connection keeps what arrived)
    --- end NAME

Anything else (a stray line from a tool) is skipped. `parse` never raises: a reply that is
garbage is a `Frame` with nothing in it, and the caller decides what a missing key means.

daemon.sh and health.sh pack their status line as several `key=value` words
(`state=stopped pid=7 signal=KILL`); `fields` splits such a line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_KEY = re.compile(r"^[a-z][a-z0-9_]*$")
BEGIN = "--- begin "
END = "--- end "


@dataclass(frozen=True, slots=True)
class Frame:
    """A parsed reply: the `key=value` lines in order (a key may repeat) and the blocks."""

    pairs: tuple[tuple[str, str], ...] = ()
    blocks: dict[str, str] = field(default_factory=dict)

    @property
    def values(self) -> dict[str, str]:
        """key -> value; when a key repeats, the last one wins."""
        return dict(self.pairs)

    def get(self, key: str) -> str | None:
        """The last value of `key`, or None."""
        for name, value in reversed(self.pairs):
            if name == key:
                return value
        return None

    def first(self, key: str) -> str | None:
        """The first value of `key`, or None."""
        for name, value in self.pairs:
            if name == key:
                return value
        return None

    def all(self, key: str) -> list[str]:
        """Every value of `key`, in order."""
        return [value for name, value in self.pairs if name == key]

    def block(self, name: str) -> str | None:
        """The text of block `name` (lines joined by \\n), or None when it is absent."""
        return self.blocks.get(name)


def parse(text: str) -> Frame:
    """Split a reply into its `key=value` lines and blocks. Never raises."""
    pairs: list[tuple[str, str]] = []
    blocks: dict[str, str] = {}
    block: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        if block is not None:
            if line == END + block:
                blocks[block] = "\n".join(body)
                block, body = None, []
            else:
                body.append(line)
        elif line.startswith(BEGIN):
            block = line[len(BEGIN):]
        else:
            key, sep, value = line.partition("=")
            if sep and _KEY.match(key):
                pairs.append((key, value))
    if block is not None:
        # Output cut off inside a block: keep what arrived, it may still say what went wrong.
        blocks[block] = "\n".join(body)
    return Frame(pairs=tuple(pairs), blocks=blocks)


def fields(key: str, value: str | None) -> dict[str, str]:
    """A status line's words as a dict: `fields("state", "stopped pid=7 signal=KILL")` ->
    {"state": "stopped", "pid": "7", "signal": "KILL"}. Words that are not `key=value` are
    skipped; an empty or missing value gives {}."""
    words = (value or "").split()
    if not words:
        return {}
    found = {key: words[0]}
    for word in words[1:]:
        name, sep, rest = word.partition("=")
        if sep and _KEY.match(name):
            found[name] = rest
    return found
