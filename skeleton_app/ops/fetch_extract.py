"""Writing what a node sends for `cluster fetch` under LOCAL_DIR/<node>/, and nowhere else.

The node's tar stream is untrusted (a compromised node can send any header), so it is read
here member by member, never handed to a tar program or `tarfile.extractall`:

* every header is parsed with the checks of skeleton_app.tarcheck (checksum, size);
* every name must pass skeleton_app.safepath.name_problem (no "..", no absolute path, no
  NUL or other control character, no empty component) and start with one of the names the
  fetch asked for; the first that does not stops the stream ("refused": the node lies);
* regular files and directories are written; symlinks, hard links, devices and fifos are
  skipped and named (a link on the node is never followed there, nor recreated here);
* every directory on the way is opened relative to its parent's descriptor with O_NOFOLLOW,
  starting at the node's directory: a symlink planted on this machine (LOCAL_DIR/node-01/logs
  -> /etc) is refused, never followed, whatever the node sends;
* a file is written to a new temporary name in its directory (O_CREAT|O_EXCL|O_NOFOLLOW) and
  renamed over its name when whole, so a reader never sees half a file and rename() replaces
  whatever sits at the name without following it;
* a file's mode is the node's permission bits less this process's umask (as tar extracts
  for a user who is not root): a node cannot leave group- or world-writable files here that
  the user's umask forbids, nor set-id bits.

Memory is bounded: data goes to disk as it arrives; a GNU long name is at most 64 KiB; pax
headers, which our node script never asks for, are refused with other unknown types.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Collection

from skeleton_app.safepath import name_problem
from skeleton_app.tarcheck import BLOCK, TarHeader, parse_header

MAX_LONGNAME = 64 * 1024
MAX_SKIPPED = 200  # skipped members named in the outcome (the count is always exact)
_SKIPPED_KINDS = {b"2": "symlink", b"1": "hard link", b"3": "character device",
                  b"4": "block device", b"6": "fifo"}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def process_umask() -> int:
    """This process's umask, read without changing it (Linux: /proc/self/status), so that
    threads creating files meanwhile never see a temporary one."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)  # no /proc: the classic read, briefly the strictest mask
    os.umask(old)
    return old


class Refused(Exception):
    """The node sent something no honest node sends (a name leading out, a bad header):
    reading stops. `str()` says what."""


class LocalProblem(Exception):
    """This machine cannot write a member where it belongs (a symlink or a file in the way,
    disk full): reading stops. `str()` says what."""


def open_node_dir(root_fd: int, node_id: str) -> int:
    """A descriptor of LOCAL_DIR/<node_id> (made if missing), never through a symlink.
    `node_id` is a validated node id (one plain component)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(node_id, 0o755, dir_fd=root_fd)
    try:
        return os.open(node_id, _DIR_FLAGS, dir_fd=root_fd)
    except OSError as exc:
        raise LocalProblem(f"{node_id}/ here {_why(exc)}: not followed, nothing written"
                           ) from None


def _why(exc: OSError) -> str:
    import errno

    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return "is a symlink or not a directory"
    return f"cannot be opened ({exc.strerror})"


class NodeTree:
    """Creates directories and files under one directory descriptor (LOCAL_DIR/<node>),
    relative paths of plain components only (checked before they get here)."""

    def __init__(self, root_fd: int):
        self.root_fd = root_fd
        self._cached: tuple[tuple[str, ...], int] | None = None  # the last parent opened

    def directory(self, parts: tuple[str, ...]) -> int:
        """A descriptor of the directory `parts` (made as needed), every component opened
        without following a symlink. Owned by this object: do not close it."""
        if not parts:
            return self.root_fd
        if self._cached is not None and self._cached[0] == parts:
            return self._cached[1]
        self._drop_cache()
        fd = self.root_fd
        try:
            for i, part in enumerate(parts):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise LocalProblem(f"{'/'.join(parts[:i + 1])} here {_why(exc)}:"
                                       " not followed") from None
                if fd != self.root_fd:
                    os.close(fd)
                fd = nxt
        except BaseException:
            if fd != self.root_fd:
                os.close(fd)
            raise
        self._cached = (parts, fd)
        return fd

    def _drop_cache(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def close(self) -> None:
        self._drop_cache()


class _File:
    """One member being written: a temporary name in its directory, renamed when whole."""

    def __init__(self, tree: NodeTree, parts: tuple[str, ...], header: TarHeader,
                 umask: int):
        self.umask = umask
        self.dir_fd = tree.directory(parts[:-1])
        self.name = parts[-1]
        self.shown = "/".join(parts)
        self.header = header
        self.left = header.size
        self.tmp = f".skeleton-fetch-{secrets.token_hex(6)}"
        try:
            self.fd = os.open(self.tmp, _NEW_FILE, 0o600, dir_fd=self.dir_fd)
        except OSError as exc:
            raise LocalProblem(f"cannot write {self.shown} here: {exc.strerror}") from None

    def write(self, data: memoryview) -> None:
        try:
            while data:
                written = os.write(self.fd, data)
                data = data[written:]
        except OSError as exc:
            self.abandon()
            raise LocalProblem(f"cannot write {self.shown} here: {exc.strerror}") from None

    def finish(self) -> None:
        try:
            # Never set-id bits from a node, never more than the user's umask allows.
            os.fchmod(self.fd, self.header.mode & 0o777 & ~self.umask)
            with contextlib.suppress(OSError, OverflowError, ValueError):
                ns = self.header.mtime * 1_000_000_000
                os.utime(self.fd, ns=(ns, ns))
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except OSError as exc:
            self.abandon()
            raise LocalProblem(f"cannot put {self.shown} in place here: {exc.strerror}"
                               ) from None

    def abandon(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.tmp, dir_fd=self.dir_fd)


class TarExtractor:
    """Feed it the node's stdout in chunks of any size; it writes the members under `tree`.
    `wanted`: the top-level names the fetch asked for. `feed` raises Refused or LocalProblem
    at the first member it will not write; call `close` at the end of the stream (and
    always: it removes a half-written temporary)."""

    def __init__(self, tree: NodeTree, wanted: Collection[str], *, umask: int | None = None,
                 max_bytes: int | None = None):
        self.tree = tree
        # A lying node could stream until the controller's disk is full: file data past
        # this many bytes is refused (None: no bound).
        self.max_bytes = max_bytes
        self.wanted = frozenset(wanted)
        self.umask = process_umask() if umask is None else umask
        self.files = 0
        self.bytes = 0
        self.skipped: list[str] = []
        self.skipped_total = 0
        self._header = bytearray()
        self._skip = 0
        self._collect = 0  # bytes of a long name (or link name) still to read
        self._collect_pad = 0
        self._collect_kind = b""
        self._longbuf = bytearray()
        self._longname: bytes | None = None
        self._file: _File | None = None

    # ------------------------------------------------------------------ the stream

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        pos = 0
        while pos < len(view):
            if self._file is not None:
                step = min(self._file.left, len(view) - pos)
                self._file.write(view[pos:pos + step])
                self._file.left -= step
                self.bytes += step
                pos += step
                if not self._file.left:
                    self._done_file()
            elif self._skip:
                step = min(self._skip, len(view) - pos)
                self._skip -= step
                pos += step
            elif self._collect:
                step = min(self._collect, len(view) - pos)
                self._longbuf += view[pos:pos + step]
                self._collect -= step
                pos += step
                if not self._collect:
                    self._skip = self._collect_pad
                    value = bytes(self._longbuf).split(b"\0", 1)[0]
                    self._longbuf.clear()
                    if self._collect_kind == b"L":
                        self._longname = value
            else:
                step = min(BLOCK - len(self._header), len(view) - pos)
                self._header += view[pos:pos + step]
                pos += step
                if len(self._header) == BLOCK:
                    block = bytes(self._header)
                    self._header.clear()
                    self._member(block)

    def close(self) -> None:
        """The stream ended: a member cut short is the node's failure (Refused)."""
        if self._file is not None:
            shown = self._file.shown
            self._file.abandon()
            self._file = None
            raise Refused(f"the stream ended inside {shown}")
        if self._collect or self._longname is not None:
            raise Refused("the stream ended inside a long name")

    def abort(self) -> None:
        """Stop: remove a file being written (its name was never touched)."""
        if self._file is not None:
            self._file.abandon()
            self._file = None

    # ------------------------------------------------------------------ members

    def _member(self, block: bytes) -> None:
        if block == bytes(BLOCK):
            return  # end of one archive; the node's next PATH follows
        header = parse_header(block)
        if isinstance(header, str):
            raise Refused(header)
        if header.kind in (b"L", b"K"):
            if header.size > MAX_LONGNAME or (header.kind == b"L"
                                              and self._longname is not None):
                raise Refused("a malformed GNU long name")
            self._collect, self._collect_kind = header.size, header.kind
            self._collect_pad = header.padded - header.size
            if not header.size:
                self._skip = header.padded
            return
        raw = self._longname if self._longname is not None else header.name
        self._longname = None
        if not (header.regular or header.kind == b"5" or header.kind in _SKIPPED_KINDS):
            raise Refused(f"{raw.decode('utf-8', 'replace')!r} is sent as tar type"
                          f" {header.kind.decode('latin-1')!r}, which this fetch never asks"
                          " for")
        parts = self._check(raw, header)
        shown = "/".join(parts)
        if header.regular:
            if self.max_bytes is not None and self.bytes + header.size > self.max_bytes:
                raise Refused(f"{shown!r} ({header.size} bytes) would take the files sent past"
                              f" the bound of {self.max_bytes} bytes (--max-bytes)")
            self._file = _File(self.tree, parts, header, self.umask)
            self._skip = header.padded - header.size
            if not header.size:
                self._done_file()
        elif header.kind == b"5":
            self.tree.directory(parts)
            self._skip = header.padded
        else:
            what = _SKIPPED_KINDS[header.kind]
            target = header.linkname.decode("utf-8", "replace")
            self._skipped(f"{shown} ({what} -> {target})" if header.kind in (b"1", b"2")
                          else f"{shown} ({what})")
            self._skip = header.padded

    def _check(self, raw: bytes, header: TarHeader) -> tuple[str, ...]:
        name = raw.decode("utf-8", "surrogateescape")
        if header.kind == b"5":
            name = name.removesuffix("/")
        problem = name_problem(name) if name else "an empty name"
        if problem is not None:
            raise Refused(f"the name {name!r}: {problem}")
        parts = tuple(name.split("/"))
        if parts[0] not in self.wanted:
            raise Refused(f"the name {name!r}, which this fetch did not ask for")
        return parts

    def _done_file(self) -> None:
        assert self._file is not None
        f, self._file = self._file, None
        f.finish()
        self.files += 1

    def _skipped(self, text: str) -> None:
        self.skipped_total += 1
        if len(self.skipped) < MAX_SKIPPED:
            self.skipped.append(text)
