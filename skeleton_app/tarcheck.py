"""Check a tar stream's headers while it passes through (`sync-models --relay`).

The controller relays a holder's tar to the targets without storing it. It still reads every
header on the way, and stops the relay at the first member the manifest does not allow: a
name not listed, a type other than a regular file, a size other than the manifest's, or a
header tar itself would not accept (a bad checksum would make the receivers' tar resynchronise
on blocks we took for data). The targets check again on their side; this is the first line.

    guard = TarGuard({b"./m/weights.bin": 1024})
    for chunk in stream:
        problem = guard.feed(chunk)     # None, or what is wrong, before the chunk goes on

`parse_header` gives one header's fields with the same checks, for a reader that has no
manifest and judges each member itself (`cluster fetch`, skeleton_app.ops.fetch_extract).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["TarGuard", "TarHeader", "parse_header"]

BLOCK = 512
_REGULAR = (b"0", b"\0")
_LONGNAME = b"L"  # GNU: the next member's name is this member's data
_MAX_LONGNAME = 64 * 1024


class TarGuard:
    """Follows a tar stream fed in chunks of any size; `allowed` maps each member name (as in
    the archive, bytes) to the size it must have."""

    def __init__(self, allowed: Mapping[bytes, int]):
        self.allowed = dict(allowed)
        self._header = bytearray()
        self._skip = 0  # bytes of the current member's data (and padding) still to pass
        self._collect = 0  # bytes of a GNU long name still to read
        self._longname = bytearray()
        self._pending_name: bytes | None = None
        self.members = 0

    def feed(self, chunk: bytes) -> str | None:
        """What is wrong in the stream so far (None: nothing yet)."""
        view = memoryview(chunk)
        pos = 0
        while pos < len(view):
            if self._skip:
                step = min(self._skip, len(view) - pos)
                self._skip -= step
                pos += step
            elif self._collect:
                step = min(self._collect, len(view) - pos)
                self._longname += view[pos:pos + step]
                self._collect -= step
                pos += step
                if not self._collect:
                    self._pending_name = bytes(self._longname).split(b"\0", 1)[0]
                    self._longname.clear()
            else:
                step = min(BLOCK - len(self._header), len(view) - pos)
                self._header += view[pos:pos + step]
                pos += step
                if len(self._header) == BLOCK:
                    problem = self._member(bytes(self._header))
                    self._header.clear()
                    if problem is not None:
                        return problem
        return None

    def _member(self, header: bytes) -> str | None:
        if header == bytes(BLOCK):
            return None  # end-of-archive padding (a member after it is checked all the same)
        if not _checksum_ok(header):
            return "a tar header with a bad checksum"
        size = _size(header[124:136])
        if size is None:
            return "a tar header with an unreadable size"
        padded = -(-size // BLOCK) * BLOCK
        kind = header[156:157]
        if kind == _LONGNAME:
            if size > _MAX_LONGNAME or self._pending_name is not None:
                return "a malformed GNU long name"
            self._collect = padded
            return None
        name = self._pending_name if self._pending_name is not None else _name(header)
        self._pending_name = None
        shown = name.decode("utf-8", "replace")
        if kind not in _REGULAR:
            return f"{shown} is sent as tar type {kind.decode('latin-1')!r}, not a regular file"
        if name not in self.allowed:
            return f"{shown} is not a file this transfer asked for"
        if size != self.allowed[name]:
            return f"{shown} is sent with {size} bytes, the manifest says {self.allowed[name]}"
        self.members += 1
        self._skip = padded
        return None


def _checksum_ok(header: bytes) -> bool:
    try:
        stored = int(header[148:156].strip(b" \0") or b"-1", 8)
    except ValueError:
        return False
    blank = header[:148] + b" " * 8 + header[156:]
    if sum(blank) == stored:
        return True
    return sum(b - 256 if b > 127 else b for b in blank) == stored  # old tars signed it


def _size(field: bytes) -> int | None:
    if field[0] & 0x80:  # GNU base-256, for sizes of 8 GiB and more
        if field[0] == 0xFF:
            return None  # negative
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    try:
        return int(field.strip(b" \0") or b"0", 8)
    except ValueError:
        return None


def _name(header: bytes) -> bytes:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:263] == b"ustar\0":  # POSIX ustar: a prefix may hold the leading part
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            return prefix + b"/" + name
    return name


# ---------------------------------------------------------------- one header, for readers
# `cluster fetch` reads a node's tar itself (no manifest: a log grows between any listing and
# the read), member by member; it parses each header with the same checks as TarGuard.

@dataclass(frozen=True, slots=True)
class TarHeader:
    """One tar header block, parsed: `kind` is the type flag (b"0" file, b"5" directory, b"2"
    symlink, b"L" a GNU long name, ...), `padded` the bytes of data (and padding) after it."""

    name: bytes
    kind: bytes
    size: int
    mode: int
    mtime: int
    linkname: bytes

    @property
    def padded(self) -> int:
        return -(-self.size // BLOCK) * BLOCK

    @property
    def regular(self) -> bool:
        return self.kind in _REGULAR or self.kind == b"7"  # 7: contiguous, a file for us


def parse_header(header: bytes) -> TarHeader | str:
    """The header in one 512-byte block, or what is wrong with it (bad checksum, unreadable
    size, mode or time). An all-zero block is the caller's to recognise (end of archive)."""
    if len(header) != BLOCK:
        return "a short tar header"
    if not _checksum_ok(header):
        return "a tar header with a bad checksum"
    size = _size(header[124:136])
    if size is None:
        return "a tar header with an unreadable size"
    mode = _octal(header[100:108])
    mtime = _size(header[136:148])
    if mode is None or mtime is None:
        return "a tar header with an unreadable mode or time"
    return TarHeader(name=_name(header), kind=header[156:157] or b"\0", size=size,
                     mode=mode, mtime=mtime, linkname=header[157:257].split(b"\0", 1)[0])


def _octal(field: bytes) -> int | None:
    try:
        return int(field.strip(b" \0") or b"0", 8)
    except ValueError:
        return None
