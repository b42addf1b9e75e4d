"""`cluster logs`: gather the tail of every node's logs, or follow them live.

    result = collect_logs(cluster, nodes, lines=200, since="15m", grep="ERROR|WARN")
    follow_logs(cluster, nodes, lines=10, on_line=lambda node, line: print(node, line))

Per node the sources are the daemon log (`<logs_dir>/skeleton-daemon.log`), every file the
`logs.files` globs match (relative to the node's app dir) and, when `daemon.manager` is
systemd, the unit's journal. Filtering happens on the node (`skeleton_app/payloads/logs.sh`,
sent on stdin; every value is an argument, nothing is evaluated): `since`, then `grep`, then
the last `lines` lines of each source. Only the result crosses the network.

Memory stays bounded whatever the logs hold: every line is cut to `max_line` bytes on the node
(before any filter reads it) and a node sends at most `max_bytes` of log (its newest bytes);
the controller enforces the same cap on what arrives, writes each source to disk as it
streams in (never holding a node's log), and merges from the files it wrote, keeping only a
small index per line.

`collect_logs` writes `OUT/<node>.log` (a header naming each source and its state, then each
source's lines byte for byte) and `OUT/merged.log` (every line prefixed with its node, in time
stamp order where lines carry ISO-8601 stamps; a line without one stays with the stamped line
before it, and sources without any stamp follow, in order). Files are written next to their
final name with O_NOFOLLOW|O_EXCL and renamed over it, relative to a directory descriptor of
OUT: a symlink planted at `OUT/<node>.log` is replaced, never followed, and node ids (validated
again here) cannot name anything outside OUT. A node that fails gets a header-only file that
says why; the others are written as usual.

`follow_logs` keeps one OpenSSH session per node (`ssh_argv`, same identity and strict host
keys) whose stdin stays open: closing it, or the controller dying, makes the node script stop
everything it started.
"""

from __future__ import annotations

import array
import contextlib
import datetime as dt
import mmap
import os
import re
import secrets
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from skeleton_app import cancel, layout, payloads
from skeleton_app.cluster import Cluster
from skeleton_app.errors import NodeErrorKind, UsageError
from skeleton_app.nodes import Node, validate_node_id
from skeleton_app.results import ClusterResult, NodeResult, failure
from skeleton_app.ssh.openssh import ssh_argv
from skeleton_app.ssh.runner import RunOptions

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_LINE",
    "DEFAULT_OUT_DIR",
    "LogSource",
    "collect_logs",
    "follow_logs",
    "merge_logs",
    "parse_lines",
    "parse_since",
    "parse_size",
]

DEFAULT_OUT_DIR = "collected_logs"
# Per node and per line: room for a day of a chatty daemon, and far below what would hurt the
# controller (the merge index costs about 70 bytes per line).
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_LINE = 64 * 1024
_SIZE = re.compile(r"(\d+)\s*([kmg]?)i?b?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
MERGED = "merged.log"
SCRIPT = "logs.sh"

LineFn = Callable[[str, bytes], None]  # (node id, one line without its newline)

_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# An ISO-8601 stamp at the start of a line: 2024-05-01 12:00:00, 2024-05-01T12:00:00.123+02:00
_STAMP = re.compile(
    rb"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    rb"\s?(Z|[+-]\d{2}:?\d{2})?")


# ---------------------------------------------------------------------------- arguments


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


def _check_pattern(pattern: str) -> None:
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


# ---------------------------------------------------------------------------- the node side


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


def _script() -> bytes:
    return payloads.data(SCRIPT)


def _node_args(cluster: Cluster, node: Node, mode: str, lines: int, since: float | None,
               pattern: str | None, max_line: int = DEFAULT_MAX_LINE,
               max_bytes: int = DEFAULT_MAX_BYTES) -> list[str]:
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


# ---------------------------------------------------------------------------- writing


class _OutDir:
    """OUT, opened once; every file is created inside it through its descriptor."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)

    def write(self, name: str, chunks: Iterable[bytes]) -> Path:
        with self.writing(name) as out:
            for chunk in chunks:
                out.write(chunk)
        return self.path / name

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[BinaryIO]:
        """A file to fill, published at OUT/name when the block ends without an error."""
        # `name` is a validated node id + ".log" or merged.log: one component, never "..".
        if "/" in name or name in (".", ".."):
            raise UsageError(f"refusing to write {name!r}: not a plain file name")
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644,
                     dir_fd=self.fd)
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
            # rename() replaces whatever sits at the name (a planted symlink included)
            # without following it.
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise

    def scratch(self, name: str) -> tuple[str, BinaryIO]:
        """A new private file inside OUT (O_EXCL|O_NOFOLLOW), for bytes on their way."""
        tmp = f".{name}.{secrets.token_hex(4)}.part"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                     dir_fd=self.fd)
        return tmp, os.fdopen(fd, "w+b")

    def remove(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _header(node: Node, sources: Sequence[LogSource], filters: str, error: str | None,
            manager: str) -> bytes:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = [f"# skeleton cluster logs: node {node.id} ({node.host}), collected {now}",
           f"# filters: {filters}"]
    if error is not None:
        out.append(f"# error: {_one_line(error)}")
    for src in sources:
        what = {"daemon": "daemon log", "file": "file", "journal": "journal of unit"}.get(
            src.kind, src.kind)
        state = f"{src.lines} lines" if src.status == "ok" else src.status
        out.append(f"# source: {what} {_one_line(src.name)}: {_one_line(state)}")
    if error is None and manager != "systemd":
        out.append(f"# source: journal: not collected (daemon.manager is {manager})")
    return ("\n".join(out) + "\n").encode("utf-8", "replace")


def _one_line(text: str) -> str:
    return text.replace("\n", "\\n").replace("\r", "\\r")


def _body(sources: Sequence[LogSource], body: BinaryIO | None) -> Iterable[bytes]:
    """Each source's bytes under a `==> name <==` line, read from `body` in pieces."""
    for src in sources:
        if not src.size or body is None:
            continue
        yield f"==> {_one_line(src.name)} <==\n".encode("utf-8", "replace")
        body.seek(src.offset)
        left = src.size
        while left:
            chunk = body.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk


# ---------------------------------------------------------------------------- merging


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


# ---------------------------------------------------------------------------- collect


def _describe_filters(lines: int, since: str | float | None, since_at: float | None,
                      grep: str | None) -> str:
    parts = [f"lines={lines}"]
    if since is not None and since_at is not None:
        stamp = dt.datetime.fromtimestamp(since_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        parts.append(f"since={since} ({stamp})" if isinstance(since, str) else f"since={stamp}")
    if grep:
        parts.append(f"grep={grep!r}")
    return ", ".join(parts)


def _since_epoch(since: str | float) -> float:
    return parse_since(since) if isinstance(since, str) else float(since)


def _lines_default(cluster: Cluster, lines: int | None) -> int:
    if lines is None:
        return parse_lines(cluster.settings.logs.lines, what="logs.lines")
    return parse_lines(lines)


def collect_logs(
    cluster: Cluster,
    nodes: Sequence[Node],
    *,
    lines: int | None = None,
    since: str | float | None = None,
    grep: str | None = None,
    out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR,
    timeout: float | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_line: int = DEFAULT_MAX_LINE,
) -> ClusterResult[Any]:
    """Gather every node's filtered logs into OUT/<node>.log and OUT/merged.log.

    `lines` defaults to `logs.lines`; `since` is epoch seconds or what `parse_since` takes.
    At most `max_bytes` of log per node (its newest) and `max_line` bytes per line are kept
    (see the module's header). Each NodeResult carries `data["sources"]` (kind, name,
    status, lines, bytes) and `data["file"]`. A node that fails is an error result; the
    others are still written."""
    count = _lines_default(cluster, lines)
    max_bytes = parse_size(max_bytes)
    max_line = parse_size(max_line, what="--max-line")
    since_at = None if since is None else _since_epoch(since)
    if grep:
        _check_pattern(grep)
    for node in nodes:
        validate_node_id(node.id)  # ids become file names
    filters = _describe_filters(count, since, since_at, grep)
    manager = cluster.settings.daemon.manager
    out = _OutDir(out_dir)
    script = _script()
    # Per node: its scratch file (the sources' bytes, in order) and what they are.
    gathered: dict[str, tuple[str, list[LogSource]]] = {}
    lock = threading.Lock()

    def one(node: Node) -> NodeResult[Any]:
        if node.id == MERGED.removesuffix(".log"):
            return failure(node.id, NodeErrorKind.LOCAL,
                           f"node id {node.id!r} would overwrite {MERGED}; not collected")
        scratch, body = out.scratch(node.id)
        try:
            reader = RecordReader(body, max_bytes)
            broken: list[str] = []

            def sink(_node: str, stream: str, data: bytes) -> None:
                if stream == "stdout" and not broken:
                    try:
                        reader.feed(data)
                    except ValueError as exc:  # stop parsing; the rest is not read as log
                        broken.append(str(exc))

            command = shlex.join(["sh", "-s", "--", *_node_args(
                cluster, node, "collect", count, since_at, grep, max_line, max_bytes)])
            result = cluster.connector.run(node, command,
                                           RunOptions(timeout=timeout, stdin=script, sink=sink))
            error = None
            sources: list[LogSource] = []
            if result.error_kind is not None:
                error = result.summary()
            elif result.exit_code != 0:
                error = f"logs.sh exited {result.exit_code}: {result.stderr.strip()[-300:]}"
            elif broken:
                error = broken[0]
            else:
                try:
                    sources = reader.finish()
                except ValueError as exc:
                    error = str(exc)
            body.flush()
            header = _header(node, sources, filters, error, manager)
            path = out.write(f"{node.id}.log", [header, *_body(sources, body)])
        finally:
            body.close()
        data = {"file": str(path), "sources": [s.as_dict() for s in sources],
                "lines": sum(s.lines for s in sources)}
        if error is None:
            with lock:
                gathered[node.id] = (scratch, sources)
        else:
            out.remove(scratch)
        if error is None:
            return NodeResult(node=node.id, exit_code=0, duration=result.duration, data=data,
                              stdout=f"{data['lines']} lines from {len(sources)} sources\n")
        if result.error_kind is not None:
            return NodeResult(node=node.id, error_kind=result.error_kind, error=result.error,
                              duration=result.duration, data=data)
        return NodeResult(node=node.id, exit_code=result.exit_code or 1, stderr=error + "\n",
                          duration=result.duration, data=data)

    try:
        result = cluster.map(one, nodes, operation="logs")
        _write_merged(out, [(node.id, gathered[node.id][0]) for node in nodes
                            if node.id in gathered], max_line)
    finally:
        for scratch, _ in gathered.values():
            out.remove(scratch)
        out.close()
    return result


def _write_merged(out: _OutDir, scratches: Sequence[tuple[str, str]], max_line: int) -> None:
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


# ---------------------------------------------------------------------------- follow


def follow_logs(
    cluster: Cluster,
    nodes: Sequence[Node],
    *,
    on_line: LineFn,
    lines: int | None = None,
    since: str | float | None = None,
    grep: str | None = None,
    stop: threading.Event | None = None,
    on_error: Callable[[str, str], None] | None = None,
) -> ClusterResult[Any]:
    """Stream new log lines of every node to `on_line(node, line)` until `stop` is set, a
    cancel (`skeleton_app.cancel`, the CLI's Ctrl-C) or KeyboardInterrupt; then stop every
    remote process. One NodeResult per node: exit 0 when
    it streamed until stopped, an error when it could not be reached or dropped out."""
    count = _lines_default(cluster, lines)
    since_at = None if since is None else _since_epoch(since)
    if grep:
        _check_pattern(grep)
    stop = stop or threading.Event()
    script = _script().decode()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    threads: list[threading.Thread] = []
    errors: dict[str, bytearray] = {}
    started = time.monotonic()

    def pump(node: Node, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        rest = b""
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            *complete, rest = (rest + chunk).split(b"\n")
            for line in complete:
                on_line(node.id, line)
            if len(rest) > 65536:  # a line without end: pass it on in pieces
                on_line(node.id, rest)
                rest = b""
        if rest:
            on_line(node.id, rest)

    def drain(node: Node, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        fd = proc.stderr.fileno()
        buf = errors.setdefault(node.id, bytearray())
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            buf.extend(chunk)
            del buf[:-4096]

    for node in nodes:
        remote = shlex.join(["sh", "-c", script, "skeleton-logs",
                             *_node_args(cluster, node, "follow", count, since_at, grep)])
        argv = [*ssh_argv(node, cluster.settings.ssh, extra=["-T"]), "--", node.host, remote]
        # A session of its own: Ctrl-C stops us, and we stop the nodes in order (closing
        # stdin), instead of ssh dying on the same SIGINT and looking like a failed node.
        # It dies with us too (even by SIGKILL), and the node script with its stdin.
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=cancel.die_with_parent())
        procs[node.id] = proc
        for fn in (pump, drain):
            th = threading.Thread(target=fn, args=(node, proc), daemon=True,
                                  name=f"logs-{fn.__name__}")
            th.start()
            threads.append(th)
    try:
        while (not stop.is_set() and not cancel.cancelled()
               and any(p.poll() is None for p in procs.values())):
            stop.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        ended = {nid for nid, p in procs.items() if p.poll() is not None}
        for proc in procs.values():
            # Closing stdin is the node script's signal to stop everything it started.
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
        deadline = time.monotonic() + 10
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for th in threads:
            th.join(timeout=5)
        for proc in procs.values():
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
    results = []
    for node in nodes:
        proc = procs[node.id]
        message = bytes(errors.get(node.id, b"")).decode("utf-8", "replace").strip()
        if node.id in ended:
            kind = NodeErrorKind.UNREACHABLE if proc.returncode == 255 else NodeErrorKind.LOST
            detail = message.splitlines()[-1] if message else f"ssh exited {proc.returncode}"
            if on_error is not None:
                on_error(node.id, detail)
            results.append(failure(node.id, kind, detail, time.monotonic() - started))
        else:
            results.append(NodeResult(node=node.id, exit_code=0,
                                      duration=time.monotonic() - started))
    return ClusterResult(results, operation="logs-follow",
                         duration=time.monotonic() - started)


def summary_rows(result: ClusterResult[Any]) -> list[list[str]]:
    """Rows for the CLI table: node, lines, sources, state."""
    rows = []
    for node, r in result.items():
        sources: Sequence[Mapping[str, Any]] = r.data.get("sources", [])
        missing = [s["name"] for s in sources if s["status"] != "ok"]
        state = "ok" if r.ok else r.summary() if r.error_kind else (r.stderr.strip() or "failed")
        if missing and r.ok:
            state = "ok; " + "; ".join(
                f"{s['name']}: {s['status']}" for s in sources if s["status"] != "ok")
        rows.append([node, str(r.data.get("lines", 0)), str(len(sources)), state])
    return rows
