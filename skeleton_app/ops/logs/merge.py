"""Merging the nodes' logs into one (OUT/merged.log): lines ordered by their ISO-8601 stamps,
from an index of compact arrays over memory-mapped files, never a copy of the lines."""

from __future__ import annotations

import array
import contextlib
import datetime as dt
import mmap
import os
import re
from collections.abc import Callable, Iterator, Sequence

from skeleton_app.ops.logs.files import MERGED, OutDir

# An ISO-8601 stamp at the start of a line: 2024-05-01 12:00:00, 2024-05-01T12:00:00.123+02:00
_STAMP = re.compile(
    rb"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    rb"\s?(Z|[+-]\d{2}:?\d{2})?")


def _stamp(line: bytes) -> float | None:
    m = _STAMP.match(line)
    if not m:
        return None
    year, month, day, hour, minute, sec = (int(g) for g in m.groups()[:6])
    frac = m.group(7)
    tz = m.group(8)
    try:
        when = dt.datetime(year, month, day, hour, minute, sec, tzinfo=dt.UTC)
    except ValueError:
        return None
    seconds = when.timestamp() + (int(frac) / 10 ** len(frac) if frac else 0.0)
    if tz and tz != b"Z":
        sign = -1 if tz[:1] == b"-" else 1
        digits = tz[1:].replace(b":", b"")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    # Stamps without an offset are taken as UTC: nodes of one cluster share a time zone,
    # and the order between them is what matters here.
    return seconds


Buffer = bytes | mmap.mmap


def _line_spans(data: Buffer) -> Iterator[tuple[int, int]]:
    pos, size = 0, len(data)
    while pos < size:
        end = data.find(b"\n", pos)
        if end < 0:
            end = size
        yield pos, end
        pos = end + 1


def merge_into(write: Callable[[bytes], object], streams: Sequence[tuple[str, Buffer]], *,
               max_line: int | None = None) -> None:
    """One log from many: `streams` is [(node, log bytes or an mmap)] in node order. Every
    line gets "node: "; stamped lines are ordered by their stamp (stable), unstamped lines
    stay with the stamped line before them, and streams without any stamp come last, in
    order. Only an index is held (stamp, stream, start, end per line: compact arrays), never
    a copy of the lines; each line is cut to `max_line` bytes."""
    stamps, which = array.array("d"), array.array("I")
    starts, ends = array.array("Q"), array.array("Q")
    plain: list[int] = []
    for index, (_node, data) in enumerate(streams):
        first = len(stamps)
        current: float | None = None
        for start, end in _line_spans(data):
            stamp = _stamp(data[start:min(end, start + 48)])
            if stamp is not None:
                current = stamp
            # NaN: a line before the stream's first stamp; it takes that stamp (below).
            stamps.append(float("nan") if current is None else current)
            which.append(index)
            starts.append(start)
            ends.append(end)
        if current is None:
            plain.append(index)
            del stamps[first:], which[first:], starts[first:], ends[first:]
            continue
        lead = next(stamps[i] for i in range(first, len(stamps)) if stamps[i] == stamps[i])
        for i in range(first, len(stamps)):
            if stamps[i] != stamps[i]:  # NaN: a line before the first stamp
                stamps[i] = lead
            else:
                break
    prefixes = [node.encode() + b": " for node, _ in streams]
    cap = max_line or 0

    def emit(index: int, start: int, end: int) -> None:
        if cap and end - start > cap:
            end = start + cap
        write(prefixes[index] + streams[index][1][start:end] + b"\n")

    # sorted() is stable: equal stamps keep stream order, then line order.
    for i in sorted(range(len(stamps)), key=stamps.__getitem__):
        emit(which[i], starts[i], ends[i])
    for index in plain:
        for start, end in _line_spans(streams[index][1]):
            emit(index, start, end)


def merge_logs(streams: Sequence[tuple[str, bytes]]) -> bytes:
    """`merge_into` to bytes (small inputs: tests, the Python API)."""
    out: list[bytes] = []
    merge_into(out.append, streams)
    return b"".join(out)


def write_merged(out: OutDir, scratches: Sequence[tuple[str, str]], max_line: int) -> None:
    """OUT/merged.log from the nodes' scratch files, mapped rather than read into memory."""
    with contextlib.ExitStack() as stack:
        streams: list[tuple[str, Buffer]] = []
        for node_id, scratch in scratches:
            fd = os.open(scratch, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=out.fd)
            f = stack.enter_context(os.fdopen(fd, "rb"))
            if os.fstat(f.fileno()).st_size:
                streams.append((node_id, stack.enter_context(
                    mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))))
        with out.writing(MERGED) as merged:  # buffered: the lines go out in large writes
            merge_into(merged.write, streams, max_line=max_line)
