"""rsync's exclude-pattern matching (`RsyncFilter`), so that callers can walk the same set of
files rsync would send (the deploy digest does)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: str
    regex: re.Pattern[str]
    anchored: bool
    dir_only: bool


def _glob_regex(pattern: str) -> str:
    """rsync's wildmatch as a regex: `*` and `?` stop at `/`, `**` crosses it, `[...]` classes,
    a backslash escapes the next character (only when the pattern has wildcards)."""
    if not any(ch in pattern for ch in "*?["):
        return re.escape(pattern)
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            j = i
            while j < len(pattern) and pattern[j] == "*":
                j += 1
            out.append(".*" if j - i >= 2 else "[^/]*")
            i = j
            continue
        if ch == "?":
            out.append("[^/]")
        elif ch == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] in "!^":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            while j < len(pattern) and pattern[j] != "]":
                j += 1
            if j >= len(pattern):
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1 : j]
                negate = body[:1] in ("!", "^")
                if negate:
                    body = body[1:]
                body = body.replace("\\", "\\\\")
                out.append(f"[^/{body}]" if negate else f"[{body}]")
                i = j
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def _compile(pattern: str) -> _Rule:
    body = pattern
    dir_only = body.endswith("/")
    body = body.rstrip("/") if dir_only else body
    anchored = body.startswith("/")
    body = body.lstrip("/") if anchored else body
    prefix = ""
    if body.startswith("**/"):
        # A leading "**/" also matches no directory at all ("**/x" matches "x").
        prefix, body = "(?:.*/)?", body[3:]
    # "dir/***" matches the directory and everything inside it.
    regex = (_glob_regex(body[:-4]) + "(?:/.*)?") if body.endswith("/***") else _glob_regex(body)
    regex = prefix + regex
    return _Rule(pattern, re.compile(regex, re.DOTALL), anchored, dir_only)


class RsyncFilter:
    """rsync's `--exclude` semantics, for walking the tree rsync would send.

    A pattern ending in `/` matches only directories; one starting with `/` is anchored at the
    transfer root; otherwise it matches the end of the path at a component boundary (without
    a `/` inside: the name alone). An excluded directory is not descended into.
    """

    def __init__(self, patterns: Iterable[str]):
        self.patterns = tuple(patterns)
        self._rules = [_compile(p) for p in self.patterns if p.strip("/")]

    def excluded(self, path: str, is_dir: bool) -> bool:
        """`path` is relative to the transfer root, `/`-separated, without a trailing `/`."""
        for rule in self._rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.anchored:
                if rule.regex.fullmatch(path):
                    return True
                continue
            start = 0
            while True:
                if rule.regex.fullmatch(path, start):
                    return True
                nxt = path.find("/", start)
                if nxt < 0:
                    break
                start = nxt + 1
        return False
