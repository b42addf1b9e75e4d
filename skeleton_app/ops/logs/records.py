"""The node side of `cluster logs`: the arguments logs.sh takes (`node_args`) and its framed
answer, parsed as it streams in (`RecordReader`, `LogSource`; the framing is in logs.sh's
header)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO

from skeleton_app import layout, payloads
from skeleton_app.cluster import Cluster
from skeleton_app.nodes import Node
from skeleton_app.ops.logs.options import DEFAULT_MAX_BYTES, DEFAULT_MAX_LINE

SCRIPT = "logs.sh"


@dataclass(frozen=True, slots=True)
class LogSource:
    """One source on one node: `kind` daemon, file or journal; `status` ok, missing, ...;
    its bytes are `size` bytes at `offset` of the node's body file (not held here)."""

    kind: str
    name: str
    status: str
    offset: int = 0
    size: int = 0
    lines: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "status": self.status,
                "lines": self.lines, "bytes": self.size}


def script() -> bytes:
    """logs.sh, the node side (sent on stdin, or as `-c` when stdin must stay open)."""
    return payloads.data(SCRIPT)


def node_args(cluster: Cluster, node: Node, mode: str, lines: int, since: float | None,
              pattern: str | None, max_line: int = DEFAULT_MAX_LINE,
              max_bytes: int = DEFAULT_MAX_BYTES) -> list[str]:
    """logs.sh's arguments (its header lists them): every value is an argument, never code."""
    settings = cluster.settings
    globs = [g if g.startswith("/") else "./" + g for g in settings.logs.files]
    return [
        mode, node.app_dir, str(lines), "" if since is None else str(int(since)),
        pattern or "", settings.daemon.manager, settings.daemon.unit,
        "1" if settings.daemon.user_unit else "0", str(max_line), str(max_bytes),
        layout.daemon_log(settings, node), *globs,
    ]


_FIELD_MAX = 8192  # one header field (a path, a status line): longer is a broken answer


class RecordReader:
    """Parses logs.sh's framed records (see its header) as they arrive, in any chunking,
    appending each source's bytes to `body` and keeping none of them. A node that sends more
    than `max_bytes` in all (it should not: logs.sh cuts first) has the rest dropped and
    counted; memory is one record header at most, whatever the node sends."""

    def __init__(self, body: BinaryIO, max_bytes: int):
        self.body = body
        self.room = max_bytes
        self.sources: list[LogSource] = []
        self._fields: list[bytes] = []
        self._field = bytearray()
        self._left = 0  # bytes of the current record's data still to come
        self._kept = self._dropped = self._lines = 0
        self._last = b"\n"
        self._offset = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._left:
                take = view[:self._left]
                self._left -= len(take)
                keep = take[:self.room]
                if keep:
                    self.body.write(keep)
                    self._lines += bytes(keep).count(b"\n")
                    self._last = bytes(keep[-1:])
                    self.room -= len(keep)
                    self._kept += len(keep)
                self._dropped += len(take) - len(keep)
                view = view[len(take):]
                if not self._left:
                    self._end_record()
                continue
            end = bytes(view[:_FIELD_MAX + 1 - len(self._field)]).find(b"\0")
            if end < 0:
                self._field += view[:_FIELD_MAX + 1 - len(self._field)]
                if len(self._field) > _FIELD_MAX:
                    raise ValueError("broken answer from logs.sh: a header field over"
                                     f" {_FIELD_MAX} bytes")
                return
            self._field += view[:end]
            view = view[end + 1:]
            self._fields.append(bytes(self._field))
            self._field.clear()
            if len(self._fields) == 5:
                self._begin_record()

    def _begin_record(self) -> None:
        tag, _kind, _name, _status, length = self._fields
        if tag != b"S":
            raise ValueError(f"unexpected record {tag[:20]!r} from logs.sh")
        if not length.isdigit():
            raise ValueError(f"bad record length {length[:20]!r} from logs.sh")
        self._left = int(length)
        self._kept = self._dropped = self._lines = 0
        self._last = b"\n"
        if not self._left:
            self._end_record()

    def _end_record(self) -> None:
        _tag, kind, name, status, _length = self._fields
        self._fields = []
        lines = self._lines + (0 if self._last == b"\n" else 1)
        if self._last != b"\n":
            self.body.write(b"\n")  # every source ends a line: the next one starts its own
            self.room = max(0, self.room - 1)
            self._kept += 1
        text = status.decode("utf-8", "replace")
        if self._dropped:
            text = f"cut: {self._dropped} bytes over --max-bytes"
        # "./" was only added so that a pattern can never read as an option: not shown.
        self.sources.append(LogSource(
            kind.decode("utf-8", "replace"),
            name.removeprefix(b"./").decode("utf-8", "replace"), text, self._offset,
            self._kept, lines))
        self._offset += self._kept

    def finish(self) -> list[LogSource]:
        if self._left or self._fields or self._field:
            raise ValueError("truncated answer from logs.sh")
        return self.sources


def parse_sources(data: bytes, body: BinaryIO, *,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> list[LogSource]:
    """Every framed record of `data` (a whole logs.sh answer), bytes appended to `body`."""
    reader = RecordReader(body, max_bytes)
    reader.feed(data)
    return reader.finish()
