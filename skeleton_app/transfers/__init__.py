"""rsync over OpenSSH: the argv, the output parsers, and a runner that reports per-file changes.

Why our own wrapper: Fabric's companion `patchwork.transfers.rsync` pins fabric<3 and imports
`invoke.vendor.six`, which Invoke 2 removed. This module keeps its call shape,

    rsync(c, source, target, exclude=(), delete=False, rsync_opts=(), ssh_opts=())

with `c` a Fabric `Connection` (ours or a plain one) or a `Node`, and fixes what made it risky:

* the command is an argv list (no local shell), with `--` before the positional paths;
* `-e` carries `ssh_argv()`: the same identity, port, known_hosts, strict host-key checking and
  jump host as the Paramiko side, quoted for rsync's own `-e` splitter (spaces and quotes in
  any value survive);
* remote paths travel inside the rsync protocol (`--secluded-args`, called `--protect-args`
  before rsync 3.2.6), so the remote shell never re-splits or expands them;
* `--delay-updates` with a `--partial-dir`: files are written in a holding directory and
  renamed into place at the end, so an interrupted transfer leaves old or new files, never a
  truncated file under its final name (plain `--partial` would);
* `--out-format` with the itemized change string and `--stats` are parsed into a per-file
  change list and counters (`FileChange`, `TransferStats`); the parsers are pure functions.

`RsyncFilter` reproduces rsync's exclude-pattern matching so that callers can walk the same set
of files rsync would send (the deploy digest does).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from skeleton_app.cancel import INTERRUPTED, TOKEN, die_with_parent
from skeleton_app.config import SSHSettings
from skeleton_app.errors import NodeError, NodeErrorKind, UsageError
from skeleton_app.nodes import Node
from skeleton_app.ssh.pool import ssh_argv

__all__ = [
    "DEFAULT_PARTIAL_DIR",
    "FileChange",
    "OutputParser",
    "Progress",
    "RsyncFilter",
    "TransferResult",
    "TransferStats",
    "build_rsync_argv",
    "classify_failure",
    "decode_name",
    "parse_item",
    "parse_progress",
    "parse_stats",
    "remote_spec",
    "rsh_command",
    "rsync",
    "rsync_quote",
    "run_rsync",
    "supports",
]

# Relative, so rsync makes one per directory (an absolute one would put every file in a
# single directory: same-named files would collide) and adds a rule that keeps it from being
# sent or deleted by --delete.
DEFAULT_PARTIAL_DIR = ".~skeleton-partial~"

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

_STDERR_KEEP = 64 * 1024


# ------------------------------------------------------------------------ quoting and argv


_RSYNC_SAFE = re.compile(r"^[A-Za-z0-9_./=:@,+%^-]+\Z")


def rsync_quote(arg: str) -> str:
    """Quote one word for rsync's `-e` splitter.

    rsync splits the `-e` value on spaces itself (no shell): single and double quotes group,
    a quote character is doubled to include it, and backslashes are literal (man rsync, -e).
    """
    if arg and _RSYNC_SAFE.match(arg):
        return arg
    return "'" + arg.replace("'", "''") + "'"


def rsh_command(argv: Sequence[str]) -> str:
    """The `-e` value that makes rsync run exactly `argv` (then the host and its own command)."""
    for word in argv:
        if "\0" in word:
            raise UsageError(f"NUL byte in an ssh argument: {word!r}")
    return " ".join(rsync_quote(word) for word in argv)


def remote_spec(host: str, path: str) -> str:
    """`host:path`, with brackets around an IPv6 address. The user travels in `-e` (`ssh -l`),
    so rsync never adds a `-l` of its own after our `--`."""
    if not path:
        raise UsageError("empty remote path")
    return f"[{host}]:{path}" if ":" in host else f"{host}:{path}"


@functools.lru_cache(maxsize=8)
def _rsync_help(binary: str) -> str:
    try:
        proc = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10,
                              check=False)
    except OSError as exc:
        raise NodeError(NodeErrorKind.LOCAL,
                        f"cannot run {binary!r} on this machine: {exc.strerror}") from exc
    return proc.stdout + proc.stderr


def supports(option: str, binary: str = "rsync") -> bool:
    """Does the local rsync know `option` (e.g. `--mkpath`, rsync 3.2.3+)?"""
    return re.search(rf"(^|[\s,]){re.escape(option)}\b", _rsync_help(binary), re.M) is not None


def protect_args_option(binary: str = "rsync") -> str:
    """`--secluded-args` where the installed rsync knows it (3.2.6+), else `--protect-args`."""
    text = _rsync_help(binary)
    if "--secluded-args" in text:
        return "--secluded-args"
    if "--protect-args" in text:
        return "--protect-args"
    raise NodeError(NodeErrorKind.LOCAL,
                    f"{binary} is too old: it cannot protect remote paths (need rsync >= 3.1)")


def build_rsync_argv(
    sources: Sequence[str],
    destination: str,
    *,
    rsh: Sequence[str] | None,
    exclude: Iterable[str] = (),
    filters: Iterable[str] = (),
    delete: bool = False,
    dry_run: bool = False,
    checksum: bool = False,
    compress: bool = True,
    partial_dir: str | None = DEFAULT_PARTIAL_DIR,
    io_timeout: int | None = None,
    progress: bool = False,
    protect_args: str | None = "--secluded-args",
    rsync_path: str | None = None,
    rsync_opts: Sequence[str] = (),
    binary: str = "rsync",
) -> list[str]:
    """The whole rsync argv (pure: no I/O). `rsync_opts` go after ours and before `--`."""
    if not sources:
        raise UsageError("rsync needs at least one source")
    argv = [
        binary,
        "--recursive", "--links", "--perms", "--times",
        # Compare times to the nanosecond (receiver rsync >= 3.1.3): by default rsync's
        # quick check sees a file rewritten within the same second, at the same size, as
        # unchanged, and a deploy would then skip new content.
        "--modify-window=-1",
        "--stats", f"--out-format={OUT_FORMAT}",
    ]
    if compress:
        argv.append("--compress")
    if partial_dir is not None:
        if not partial_dir or partial_dir.startswith("/"):
            # An absolute one would hold every file of the transfer in one directory.
            raise UsageError(f"partial dir must be a relative path, got {partial_dir!r}")
        argv += ["--delay-updates", f"--partial-dir={partial_dir}"]
    if rsh is not None:
        if protect_args:
            argv.append(protect_args)
        argv += ["-e", rsh_command(rsh)]
    if rsync_path:
        argv.append(f"--rsync-path={rsync_path}")
    if delete:
        argv.append("--delete")
    if dry_run:
        argv.append("--dry-run")
    if checksum:
        argv.append("--checksum")
    if io_timeout:
        argv.append(f"--timeout={int(io_timeout)}")
    if progress:
        argv.append("--info=progress2")
    argv += [f"--filter={rule}" for rule in filters]
    argv += [f"--exclude={pattern}" for pattern in exclude]
    argv += list(rsync_opts)
    argv.append("--")
    argv += list(sources)
    argv.append(destination)
    return argv


# ------------------------------------------------------------------------ output parsing


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


# ------------------------------------------------------------------------ running


def run_rsync(
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    on_change: Callable[[FileChange], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> TransferResult:
    """Run an rsync argv (from `build_rsync_argv`), streaming its output into the parsers.

    `timeout` bounds the whole run (wall clock): rsync is killed at the deadline. rsync stays in
    our process group, so Ctrl-C stops it with us; a cancel (`skeleton_app.cancel`) stops it
    too, and it dies with this process (`die_with_parent`). The environment gets LC_ALL=C:
    counters and escapes then look the same on every machine (names are unescaped by
    `decode_name`).
    """
    if shutil.which(argv[0]) is None:
        raise NodeError(NodeErrorKind.LOCAL,
                        f"{argv[0]} is not installed on this machine (apt-get install rsync)")
    env = dict(os.environ, LC_ALL="C")
    parser = OutputParser(on_change=on_change, on_progress=on_progress)
    started = time.monotonic()
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, preexec_fn=die_with_parent())
    err = bytearray()

    def read_stderr() -> None:
        assert proc.stderr is not None
        fd = proc.stderr.fileno()
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            err.extend(chunk)
            if len(err) > _STDERR_KEEP:
                del err[: len(err) - _STDERR_KEEP]

    reader = threading.Thread(target=read_stderr, daemon=True, name="rsync-stderr")
    reader.start()
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        _stop(proc)

    timer = threading.Timer(timeout, kill) if timeout else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        with TOKEN.on_cancel(lambda: _stop(proc)):
            assert proc.stdout is not None
            out_fd = proc.stdout.fileno()
            for chunk in iter(lambda: os.read(out_fd, 65536), b""):
                parser.feed(chunk)
            parser.close()
            code = proc.wait()
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:  # an exception in a callback: do not leave rsync behind
            _stop(proc)
        reader.join(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    return TransferResult(
        argv=tuple(argv),
        exit_code=None if killed.is_set() else code,
        changes=tuple(parser.changes),
        stats=parser.stats,
        stderr=bytes(err).decode("utf-8", "replace"),
        duration=time.monotonic() - started,
        timed_out=killed.is_set(),
        output=tuple(parser.other),
        # rsync exits 20 on SIGINT: the terminal's Ctrl-C may reach it before our handler.
        interrupted=not killed.is_set() and (TOKEN.cancelled or code == 20),
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM first: rsync then stops its ssh child itself (SIGKILL would orphan it)."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _endpoint(target: Any, settings: SSHSettings | None) -> tuple[Node, SSHSettings]:
    """The node and SSH settings behind a Node, our Connection, or a plain Fabric one."""
    if isinstance(target, Node):
        return target, settings or SSHSettings()
    node = getattr(target, "node", None)
    connector = getattr(target, "connector", None)
    if isinstance(node, Node):
        if settings is None:
            settings = connector.settings if connector is not None else SSHSettings()
        return node, settings
    host = getattr(target, "host", None)
    if not isinstance(host, str):
        raise TypeError(f"expected a Node or a Fabric Connection, got {type(target).__name__}")
    keys = (getattr(target, "connect_kwargs", None) or {}).get("key_filename")
    identity = keys[0] if isinstance(keys, list | tuple) and keys else keys
    try:
        plain = Node(id="remote", host=host, port=int(getattr(target, "port", 22) or 22),
                     user=getattr(target, "user", None) or "root",
                     identity_file=identity if isinstance(identity, str) else None)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return plain, settings or SSHSettings()


def rsync(
    connection: Any,
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    target: str,
    *,
    exclude: Iterable[str] = (),
    delete: bool = False,
    rsync_opts: Sequence[str] = (),
    ssh_opts: Sequence[str] = (),
    settings: SSHSettings | None = None,
    filters: Iterable[str] = (),
    dry_run: bool = False,
    checksum: bool = False,
    compress: bool = True,
    partial_dir: str | None = DEFAULT_PARTIAL_DIR,
    timeout: float | None = None,
    io_timeout: int | None = None,
    rsync_path: str | None = None,
    on_change: Callable[[FileChange], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> TransferResult:
    """Upload local `source` (a path or several) to `target` on the connection's host.

    Like patchwork's: a trailing slash on a source directory sends its contents, without one
    the directory itself. `target` is a remote path and may hold spaces or quotes. `ssh_opts`
    are extra OpenSSH arguments (a list, e.g. `["-o", "Compression=no"]`); `rsync_opts` extra
    rsync arguments. Never raises for a failed transfer: check `.ok`, `classify_failure`.
    """
    node, ssh_settings = _endpoint(connection, settings)
    if isinstance(source, str | os.PathLike):
        sources = [os.fspath(source)]
    else:
        sources = [os.fspath(s) for s in source]
    # A plain Fabric Connection names no node: its key is checked by address, not by id.
    pin = isinstance(connection, Node) or isinstance(getattr(connection, "node", None), Node)
    rsh = [*ssh_argv(node, ssh_settings, extra=ssh_opts, pin=pin), "--"]
    argv = build_rsync_argv(
        sources, remote_spec(node.host, target), rsh=rsh, exclude=exclude, filters=filters,
        delete=delete, dry_run=dry_run, checksum=checksum, compress=compress,
        partial_dir=partial_dir, io_timeout=io_timeout, progress=on_progress is not None,
        protect_args=protect_args_option(), rsync_path=rsync_path, rsync_opts=rsync_opts,
    )
    return run_rsync(argv, timeout=timeout, on_change=on_change, on_progress=on_progress)


# ------------------------------------------------------------------------ exclude patterns


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
