"""The arguments of `cluster logs`, checked before any node is contacted: line counts, `since`
(durations or ISO dates), byte sizes, the grep pattern, and how the filters are described in
each node's file header."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import time

from skeleton_app.cluster import Cluster
from skeleton_app.errors import UsageError

DEFAULT_OUT_DIR = "collected_logs"
# Per node and per line: room for a day of a chatty daemon, and far below what would hurt the
# controller (the merge index costs about 70 bytes per line).
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_LINE = 64 * 1024
_SIZE = re.compile(r"(\d+)\s*([kmg]?)i?b?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_lines(value: object, *, what: str = "--lines") -> int:
    """A positive whole number of lines, from an int or the text a user typed."""
    text = str(value).strip() if not isinstance(value, bool) else ""
    if isinstance(value, int) and not isinstance(value, bool):
        number: int | None = value
    elif re.fullmatch(r"[+-]?\d+", text):
        number = int(text)
    else:
        number = None
    if number is None or number < 1:
        raise UsageError(f"{what}: expected a whole number of lines, at least 1, got {value!r}")
    return number


def parse_since(value: str, *, now: float | None = None) -> float:
    """Epoch seconds from "90s", "15m", "2h", "1d", "1w", "1h30m", or an ISO-8601 date or
    date and time (local time unless it carries an offset)."""
    text = value.strip()
    now = time.time() if now is None else now
    if text and _DURATION.sub("", text).strip() == "":
        seconds = sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(text))
        return now - seconds
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--since: expected a duration (30s, 15m, 2h, 1d, 1w, 1h30m) or an ISO date/time"
            f" (2024-05-01, 2024-05-01T12:00), got {value!r}") from None
    if when.tzinfo is None:
        when = when.astimezone()  # the controller's local time
    return when.timestamp()


def parse_size(value: object, *, what: str = "--max-bytes") -> int:
    """A positive byte count from an int or "512", "64K", "16M", "1G" (powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = _SIZE.fullmatch(str(value).strip()) if isinstance(value, str) else None
    number = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()] if m else 0
    if number < 1:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise UsageError(f"{what}: expected a size in bytes (512, 64K, 16M, 1G), got {shown}")
    return number


def check_pattern(pattern: str) -> None:
    """Refuse a pattern grep -E would refuse on every node, before contacting any."""
    if "\0" in pattern or "\n" in pattern:
        raise UsageError("--grep: the pattern cannot hold NUL or newline characters")
    grep = shutil.which("grep")
    if grep is None:
        return  # the nodes will say it
    proc = subprocess.run([grep, "-E", "-e", pattern], input=b"", capture_output=True,
                          env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "")},
                          timeout=10, check=False)
    if proc.returncode == 2:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise UsageError(f"--grep: invalid pattern {pattern!r}"
                         + (f": {detail[-1]}" if detail else ""))


def describe_filters(lines: int, since: str | float | None, since_at: float | None,
                      grep: str | None) -> str:
    parts = [f"lines={lines}"]
    if since is not None and since_at is not None:
        stamp = dt.datetime.fromtimestamp(since_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        parts.append(f"since={since} ({stamp})" if isinstance(since, str) else f"since={stamp}")
    if grep:
        parts.append(f"grep={grep!r}")
    return ", ".join(parts)


def since_epoch(since: str | float) -> float:
    return parse_since(since) if isinstance(since, str) else float(since)


def lines_default(cluster: Cluster, lines: int | None) -> int:
    if lines is None:
        return parse_lines(cluster.settings.logs.lines, what="logs.lines")
    return parse_lines(lines)
