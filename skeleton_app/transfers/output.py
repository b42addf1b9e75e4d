"""rsync's output, parsed: per-file changes (`FileChange`), `--stats` counters (`TransferStats`),
`--info=progress2` updates (`Progress`), the streaming `OutputParser`, what one run did
(`TransferResult`) and why it failed (`classify_failure`, `disk_full`). Pure functions and
values: no processes here."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from skeleton_app.cancel import INTERRUPTED
from skeleton_app.errors import NodeErrorKind

# Prefix of our --out-format lines: nothing else rsync prints on stdout starts with it, and
# file names cannot forge it because rsync escapes newlines in names as \#012.
ITEM_PREFIX = "@@skel "
OUT_FORMAT = ITEM_PREFIX + "%i %l %n"

# rsync's exit codes (man rsync, EXIT VALUES), for messages.
EXIT_MEANINGS: dict[int, str] = {
    1: "syntax or usage error",
    2: "protocol incompatibility",
    3: "errors selecting input/output files or dirs",
    4: "requested action not supported",
    5: "error starting client-server protocol",
    10: "error in socket I/O",
    11: "error in file I/O",
    12: "error in rsync protocol data stream",
    13: "errors with program diagnostics",
    14: "error in IPC code",
    20: "received SIGUSR1 or SIGINT",
    21: "some error returned by waitpid()",
    22: "error allocating core memory buffers",
    23: "partial transfer due to error",
    24: "partial transfer due to vanished source files",
    25: "the --max-delete limit stopped deletions",
    30: "timeout in data send/receive",
    35: "timeout waiting for daemon connection",
    255: "the ssh connection failed",
}


@dataclass(frozen=True, slots=True)
class FileChange:
    """One line of rsync's itemized output (`%i`): what happened to one path.

    `update` is rsync's first letter: `<` sent, `>` received, `c` created or changed locally
    (directories, symlinks), `h` hard link, `.` attributes only, `*` a message (`deleting`).
    `file_type` is `f` file, `d` directory, `L` symlink, `D` device, `S` special; empty for
    deletions. `attrs` holds the nine attribute letters (`+++++++++` for a new item).
    """

    path: str
    update: str
    file_type: str
    attrs: str
    size: int | None = None
    message: str | None = None

    @property
    def deleted(self) -> bool:
        return self.message == "deleting"

    @property
    def created(self) -> bool:
        return not self.deleted and self.attrs.startswith("+")

    @property
    def is_dir(self) -> bool:
        return self.file_type == "d" or (self.deleted and self.path.endswith("/"))

    @property
    def content_sent(self) -> bool:
        return self.update in "<>" and not self.deleted

    @property
    def kind(self) -> str:
        """'deleted', 'created', 'updated' (content) or 'attributes' (times, perms)."""
        if self.deleted:
            return "deleted"
        if self.created:
            return "created"
        if self.content_sent or self.update == "c":
            return "updated"
        return "attributes"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "item": self.item, "size": self.size}

    @property
    def item(self) -> str:
        """rsync's itemize string as printed (`>f.st......`, `*deleting`)."""
        if self.message is not None:
            return "*" + self.message
        return self.update + self.file_type + self.attrs


@dataclass(frozen=True, slots=True)
class TransferStats:
    """The counters of `rsync --stats` (None where rsync did not print one)."""

    files_total: int | None = None
    files_created: int | None = None
    files_deleted: int | None = None
    files_transferred: int | None = None  # regular files whose content was sent
    total_size: int | None = None
    transferred_size: int | None = None
    literal_data: int | None = None
    matched_data: int | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class Progress:
    """One `--info=progress2` update: whole-transfer totals so far."""

    bytes: int
    percent: int
    rate: str
    elapsed: str
    transfers: int | None = None
    to_check: int | None = None
    total: int | None = None


_ITEM_RE = re.compile(
    r"^(?:\*(?P<message>[a-z][a-z ]*?)|(?P<update>[<>ch.])(?P<type>[fdLDS])(?P<attrs>\S+))"
    r" +(?P<size>\d+) (?P<name>.*)\Z"
)
_ESCAPE_RE = re.compile(rb"\\#([0-7]{3})")
_PROGRESS_RE = re.compile(
    r"^\s*(?P<bytes>[\d,.]+)(?P<unit>[KMGTP]?)\s+(?P<percent>\d+)%\s+(?P<rate>\S+)\s+"
    r"(?P<elapsed>\d+:\d\d:\d\d)"
    r"(?:\s+\(xfr#(?P<xfr>\d+), (?:to|ir)-chk=(?P<left>\d+)/(?P<total>\d+)\))?\s*\Z"
)
_STATS_KEYS = {
    "Number of files": "files_total",
    "Number of created files": "files_created",
    "Number of deleted files": "files_deleted",
    "Number of regular files transferred": "files_transferred",
    "Total file size": "total_size",
    "Total transferred file size": "transferred_size",
    "Literal data": "literal_data",
    "Matched data": "matched_data",
    "Total bytes sent": "bytes_sent",
    "Total bytes received": "bytes_received",
}
_NUMBER_RE = re.compile(r"^(?P<num>\d[\d,]*(?:\.\d+)?)(?P<unit>[KMGTP]?)(?:B| bytes)?\b")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def decode_name(raw: str | bytes) -> str:
    """Undo rsync's escaping of unprintable bytes in names (`\\#012` is a newline)."""
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    data = _ESCAPE_RE.sub(lambda m: bytes([int(m.group(1), 8)]), data)
    return data.decode("utf-8", "replace")


def parse_item(line: str) -> FileChange | None:
    """Parse one `--out-format` line (with or without our prefix); None if it is not one."""
    if line.startswith(ITEM_PREFIX):
        line = line[len(ITEM_PREFIX):]
    m = _ITEM_RE.match(line)
    if not m:
        return None
    size = int(m.group("size"))
    name = decode_name(m.group("name"))
    if m.group("message") is not None:
        return FileChange(path=name, update="*", file_type="", attrs="",
                          size=None, message=m.group("message").strip())
    return FileChange(path=name, update=m.group("update"), file_type=m.group("type"),
                      attrs=m.group("attrs"), size=size)


def _number(text: str) -> int | None:
    m = _NUMBER_RE.match(text.strip())
    if not m:
        return None
    value = float(m.group("num").replace(",", ""))
    return int(value * _UNITS[m.group("unit")])


def parse_stats(text: str) -> TransferStats | None:
    """The `--stats` block anywhere in `text`; None when there is none (rsync failed early)."""
    values: dict[str, int | None] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        name = _STATS_KEYS.get(key.strip())
        if sep and name:
            values[name] = _number(rest)
    return TransferStats(**values) if values else None


def parse_progress(line: str) -> Progress | None:
    m = _PROGRESS_RE.match(line)
    if not m:
        return None
    amount = _number(m.group("bytes") + m.group("unit")) or 0
    return Progress(
        bytes=amount, percent=int(m.group("percent")), rate=m.group("rate"),
        elapsed=m.group("elapsed"),
        transfers=int(m.group("xfr")) if m.group("xfr") else None,
        to_check=int(m.group("left")) if m.group("left") else None,
        total=int(m.group("total")) if m.group("total") else None,
    )


class OutputParser:
    """Incremental parser of rsync's stdout: feed it chunks as they arrive.

    Lines end with `\\n` or `\\r` (progress updates rewrite one line with `\\r`). Item lines go
    to `changes` (and `on_change`), progress lines to `on_progress`, the rest is kept for
    `parse_stats`.
    """

    def __init__(self, on_change: Callable[[FileChange], None] | None = None,
                 on_progress: Callable[[Progress], None] | None = None):
        self.changes: list[FileChange] = []
        self.other: list[str] = []
        self.on_change = on_change
        self.on_progress = on_progress
        self._rest = b""

    def feed(self, data: bytes) -> None:
        buf = self._rest + data
        lines = re.split(rb"[\r\n]", buf)
        self._rest = lines.pop()
        for raw in lines:
            self._line(raw)

    def close(self) -> None:
        if self._rest:
            self._line(self._rest)
            self._rest = b""

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "surrogateescape")
        if line.startswith(ITEM_PREFIX):
            change = parse_item(line)
            if change is not None:
                self.changes.append(change)
                if self.on_change:
                    self.on_change(change)
                return
        progress = parse_progress(line) if line[:1] == " " else None
        if progress is not None:
            if self.on_progress:
                self.on_progress(progress)
            return
        if line:
            self.other.append(line)

    @property
    def stats(self) -> TransferStats | None:
        return parse_stats("\n".join(self.other))


# ------------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class TransferResult:
    """What one rsync run did. `exit_code` is None when it was killed at the deadline."""

    argv: tuple[str, ...]
    exit_code: int | None
    changes: tuple[FileChange, ...] = ()
    stats: TransferStats | None = None
    stderr: str = ""
    duration: float = 0.0
    timed_out: bool = False
    output: tuple[str, ...] = field(default=(), repr=False)  # stdout lines that were not items
    interrupted: bool = False  # stopped by Ctrl-C / a cancel (skeleton_app.cancel)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def files_changed(self) -> int:
        """Paths created, updated or deleted; a directory whose times alone moved is not."""
        return sum(1 for c in self.changes if not (c.is_dir and c.kind == "attributes"))

    @property
    def bytes_sent(self) -> int:
        return (self.stats.bytes_sent or 0) if self.stats else 0

    def error_message(self, lines: int = 5) -> str:
        """`rsync exit 11 (error in file I/O): <last stderr lines>`."""
        if self.interrupted:
            return f"rsync {INTERRUPTED}"  # its own last words then only say it was killed
        if self.timed_out:
            head = "rsync killed at its deadline"
        else:
            meaning = EXIT_MEANINGS.get(self.exit_code or 0, "")
            head = f"rsync exit {self.exit_code}" + (f" ({meaning})" if meaning else "")
        tail = [ln for ln in self.stderr.splitlines() if ln.strip()][-lines:]
        return head + (": " + " | ".join(tail) if tail else "")


# Most specific first: OpenSSH prints "Host key verification failed." after either reason.
_SSH_FAILURES: tuple[tuple[str, NodeErrorKind], ...] = (
    ("REMOTE HOST IDENTIFICATION HAS CHANGED", NodeErrorKind.HOSTKEY_CHANGED),
    ("host key is known for", NodeErrorKind.HOSTKEY_UNKNOWN),
    ("Host key verification failed", NodeErrorKind.HOSTKEY_UNKNOWN),
    ("Permission denied (", NodeErrorKind.AUTH),
    ("Connection refused", NodeErrorKind.REFUSED),
    ("Connection timed out", NodeErrorKind.UNREACHABLE),
    ("No route to host", NodeErrorKind.UNREACHABLE),
    ("Network is unreachable", NodeErrorKind.UNREACHABLE),
    ("Could not resolve hostname", NodeErrorKind.UNREACHABLE),
    ("Connection closed by", NodeErrorKind.LOST),
    ("Connection reset by", NodeErrorKind.LOST),
    ("Broken pipe", NodeErrorKind.LOST),
    ("Timeout, server", NodeErrorKind.LOST),
)
_REMOTE_MISSING = re.compile(
    r"(rsync: (command )?not found|rsync: No such file or directory|"
    r"command not found|rsync: not found)", re.IGNORECASE)


def classify_failure(result: TransferResult, node: str = "") -> tuple[NodeErrorKind | None, str]:
    """Why a transfer failed: (error kind, message), kind None when rsync ran and failed
    (disk full, permission denied: the node's answer, not a broken connection).

    rsync reports ssh failures as exit 255 (or 12 when the link died mid-stream), and a
    missing remote rsync as exit 12 or 127 with the remote shell's "not found" on stderr.
    """
    where = f"on {node}" if node else "on the node"
    if result.interrupted:
        return NodeErrorKind.INTERRUPTED, result.error_message()
    if result.timed_out:
        return NodeErrorKind.TIMEOUT, result.error_message()
    if disk_full(result):
        # The receiver gave up on a full disk; the sender may then report a broken pipe or a
        # protocol error (exit 12), which must not read as a lost connection.
        return None, result.error_message()
    if result.exit_code == 30:
        return NodeErrorKind.TIMEOUT, result.error_message()
    if result.exit_code in (12, 127, 255, 14, 5) and _REMOTE_MISSING.search(result.stderr):
        return NodeErrorKind.LOCAL, (
            f"rsync is not installed {where} (the remote side needs it too: apt-get install"
            f" rsync); {result.error_message(2)}")
    if result.exit_code in (255, 12, 10, 14, 5):
        for needle, kind in _SSH_FAILURES:
            if needle in result.stderr:
                return kind, result.error_message()
        if result.exit_code == 255:
            return NodeErrorKind.UNREACHABLE, result.error_message()
    return None, result.error_message()


def disk_full(result: TransferResult) -> bool:
    return "No space left on device" in result.stderr or "Disk quota exceeded" in result.stderr


