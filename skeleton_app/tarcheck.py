"""Check a tar stream's headers while it passes through (`sync-models --relay`).

The controller relays a holder's tar to the targets without storing it. It still reads every
header on the way, and stops the relay at the first member the manifest does not allow: a
name not listed, a type other than a regular file, a size other than the manifest's, or a
header tar itself would not accept (a bad checksum would make the receivers' tar resynchronise
on blocks we took for data). The targets check again on their side; this is the first line.

    guard = TarGuard({b"./m/weights.bin": 1024})
    for chunk in stream:
        problem = guard.feed(chunk)     # None, or what is wrong, before the chunk goes on
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["TarGuard"]

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
