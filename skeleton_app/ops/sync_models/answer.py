"""What a node said: the NUL-separated records models.sh prints, parsed into `Facts`.

Names may hold any byte (they are decoded with surrogateescape, and encoded back the same
way when a step names them), so the answer is parsed as bytes, never as text lines. The
record tags are documented in models.sh (emit_*).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.ops.sync_models.paths import strip_dot


@dataclass(frozen=True, slots=True)
class Stat:
    """One entry of a node's listing."""

    kind: str  # find's %y: f d l p s c b
    size: int
    nlink: int
    key: tuple[str, ...]  # size, mtime, ctime, inode: the hash cache key
    target: str


@dataclass
class Facts:
    """What one `probe` (or other step) printed. Paths are relative to M, without "./"."""

    avail: int = 0
    avail_path: str = ""
    exists: bool = False
    entries: dict[str, Stat] = field(default_factory=dict)
    final_claims: dict[str, bytes] = field(default_factory=dict)
    stage_claims: dict[str, bytes] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    staged: int = 0
    reports: dict[int, tuple[str, str]] = field(default_factory=dict)  # peer -> (state, why)
    finished: set[int] = field(default_factory=set)  # peers that removed their run dir


def parse_answer(data: bytes) -> Facts:
    """Parse the NUL-separated records of models.sh (see its header)."""
    facts = Facts()
    pos = 0

    def token() -> bytes:
        nonlocal pos
        end = data.find(b"\0", pos)
        if end < 0:
            raise NodeError(NodeErrorKind.PROTOCOL, "truncated answer from models.sh")
        tok = data[pos:end]
        pos = end + 1
        return tok

    while pos < len(data):
        tag = token()
        if tag == b"df":
            facts.avail = int(token() or b"0")
            facts.avail_path = _decode(token())
        elif tag == b"M":
            facts.exists = token() == b"yes"
        elif tag == b"e":
            meta, path, target = token().split(b" "), _decode(token()), _decode(token())
            kind, size, nlink = meta[0].decode(), int(meta[1]), int(meta[2])
            key = (meta[1].decode(), meta[3].decode(), meta[4].decode(), meta[5].decode())
            facts.entries[strip_dot(path)] = Stat(kind, size, nlink, key, target)
        elif tag == b"c":
            which, name, length = token(), _decode(token()), int(token())
            content = data[pos:pos + length]
            pos += length
            (facts.final_claims if which == b"final" else facts.stage_claims)[name] = content
        elif tag == b"H":
            while True:
                rec = token()
                if rec == b"/H":
                    break
                if len(rec) > 66:
                    facts.hashes[strip_dot(_decode(rec[66:]))] = rec[:64].decode()
        elif tag == b"staged":
            facts.staged = int(token() or b"0")
        elif tag == b"R":
            peer, state, why = token(), _decode(token()), _decode(token())
            if peer.isdigit():
                facts.reports[int(peer)] = (state, why)
        elif tag == b"F":
            peer = token()
            if peer.isdigit():
                facts.finished.add(int(peer))
        elif tag in (b"uploaded", b"sent", b"aborted", b"finished"):
            continue
        else:
            raise NodeError(NodeErrorKind.PROTOCOL, f"unexpected record {tag[:20]!r} from"
                            " models.sh")
    return facts


def under(entries: Mapping[str, Stat], root: str) -> dict[str, Stat]:
    """Entries at `root` or below it, keyed by path relative to `root`."""
    out: dict[str, Stat] = {}
    prefix = root + "/"
    for path, st in entries.items():
        if path == root:
            out[""] = st
        elif path.startswith(prefix):
            out[path[len(prefix):]] = st
    return out


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
