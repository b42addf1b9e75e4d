"""`deploy --diff` (ansible `--check --diff`): what a deploy would change on one node, file by
file, as typed values (`FileDiff`, `NodeDiff` in `DeployOutcome.diff`).

The list of files is the dry run's (rsync's itemized changes, so excludes, protect filters and
`--delete` are exactly a deploy's). The node's copies of the changed files come in ONE round
trip (`payloads/deploy_diff.sh` over the pooled runner, read-only): requests go by number on
stdin, replies name the number, never a path, so a node cannot make us read or show anything
we did not ask for. A path that is a symlink on the node (or under one) is refused, never
followed. Sizes are capped: FILE_CAP bytes of one file, NODE_BUDGET bytes from one node in all,
DIFF_CAP bytes of diff text per node; beyond them a file is named "diff not shown (N bytes)".

Kinds: `changed` (a unified diff of the node's copy, a/, against the local one, b/), `new`
(the local file whole, from /dev/null), `deleted` (named: `--delete`), `binary` ("binary file
differs": a NUL byte or not UTF-8 on either side), `too-large`, `refused` (a symlink on the
node, an unreadable copy, a name that is not a plain relative path). A file whose content is
the same on both sides (only its time differs) is counted in `NodeDiff.same`, not listed.

Node text is data here; the views make it safe for a terminal.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import os
import posixpath
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from skeleton_app import payloads
from skeleton_app.nodes import Node
from skeleton_app.payloads import framing
from skeleton_app.ssh.runner import Runner, RunOptions
from skeleton_app.transfers import FileChange

SCRIPT = "deploy_diff.sh"
FILE_CAP = 256 * 1024  # bytes of one file read (from the node, and locally)
NODE_BUDGET = 1024 * 1024  # bytes read from one node in all
DIFF_CAP = 1024 * 1024  # bytes of diff text kept per node

Kind = Literal["changed", "new", "deleted", "binary", "too-large", "refused"]
BINARY = "binary file differs"
_STATUSES = frozenset({"data", "present", "absent", "symlink", "notfile", "unreadable", "big",
                       "budget"})


@dataclass(frozen=True, slots=True)
class FileDiff:
    """One file a deploy would change. `diff`: the unified diff (kinds changed and new);
    `message`: what is shown instead (binary, too large, refused)."""

    path: str
    kind: Kind
    diff: str = ""
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "diff": self.diff,
                "message": self.message}


@dataclass(frozen=True, slots=True)
class NodeDiff:
    """The diff of one node: its files in rsync's order, how many changed files have the same
    content already (times only), and `error` when the node's copies could not be fetched."""

    files: tuple[FileDiff, ...] = ()
    same: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"files": [f.as_dict() for f in self.files], "same": self.same,
                "error": self.error}


@dataclass(frozen=True, slots=True)
class NodeCopy:
    """What the node said about one requested path: `status` (see deploy_diff.sh, or
    `missing` when it did not answer), its size, and its bytes for `data`."""

    status: str
    size: int | None = None
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class LocalCopy:
    """The local file: its bytes (at most FILE_CAP), or its size when bigger, or why it
    cannot be read."""

    data: bytes | None = None
    size: int = 0
    error: str | None = None


# ---- which files ------------------------------------------------------------------------------

def safe_path(path: str) -> str | None:
    """`path` as a plain relative path (no `..`, `.`, empty parts, leading `/`, NUL or
    newline), or None."""
    if not path or "\0" in path or "\n" in path or path.startswith("/"):
        return None
    parts = path.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return "/".join(parts)


def wanted(changes: Sequence[FileChange]) -> list[FileChange]:
    """The changes a diff shows: regular files whose content would be sent, and deletions
    (rsync lists them only with --delete). Attribute-only changes, directories, symlinks
    are not file content."""
    return [c for c in changes if c.deleted or (c.file_type == "f" and c.content_sent)]


# ---- the node's side --------------------------------------------------------------------------

def node_command(dest: str) -> str:
    return shlex.join(["sh", "-c", payloads.text(SCRIPT), "skeleton-diff", dest,
                       str(FILE_CAP), str(NODE_BUDGET)])


def request_lines(requests: Sequence[tuple[str, bool]]) -> bytes:
    """stdin of deploy_diff.sh: `r PATH` (send it) or `s PATH` (say what is there)."""
    return "".join(f"{'r' if read else 's'} {path}\n" for path, read in requests).encode()


def reply_limit(count: int) -> int:
    """The most bytes a well-behaved node sends for `count` requests (base64 of the budget
    and of one file that grew past the cap, plus the lines)."""
    return (NODE_BUDGET + FILE_CAP + 1) * 4 // 3 + 2048 + 128 * count


def parse_reply(text: str, count: int) -> tuple[dict[int, NodeCopy], str | None]:
    """The node's copies by request number, and an error for a reply that is not one.
    Numbers outside the request, repeats, unknown statuses and bad base64 are ignored or
    refused: they never name a path."""
    frame = framing.parse(text)
    error = frame.get("error")
    if error is not None:
        return {}, f"the node's diff helper failed: {error}"
    dest = frame.get("dest")
    if dest == "absent":
        return {n: NodeCopy("absent") for n in range(count)}, None
    if dest != "ok":
        return {}, "the node's diff helper gave no answer"
    copies: dict[int, NodeCopy] = {}
    for value in frame.all("entry"):
        words = value.split()
        if not 2 <= len(words) <= 3 or not words[0].isdigit() or words[1] not in _STATUSES:
            continue
        n, status = int(words[0]), words[1]
        if n >= count or n in copies:
            continue
        size = int(words[2]) if len(words) == 3 and words[2].isdigit() else None
        data: bytes | None = None
        if status == "data":
            block = frame.block(str(n))
            try:
                raw = base64.b64decode("".join((block or "").split()), validate=True)
            except (binascii.Error, ValueError):
                copies[n] = NodeCopy("unreadable", size)
                continue
            if len(raw) > FILE_CAP:
                status, size = "big", max(size or 0, len(raw))
            else:
                data = raw
        copies[n] = NodeCopy(status, size, data)
    return copies, None


class _Collect:
    """stdout bytes of the node's reply, up to `limit` (memory bounded whatever it sends)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False

    def __call__(self, node: str, stream: str, data: bytes) -> None:
        if stream != "stdout" or self.overflow:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.overflow = True
            self.chunks.clear()
            return
        self.chunks.append(data)

    def text(self) -> str:
        return b"".join(self.chunks).decode("ascii", "replace")


def fetch(runner: Runner, node: Node, dest: str, requests: Sequence[tuple[str, bool]], *,
          timeout: float | None) -> tuple[dict[int, NodeCopy], str | None]:
    """Ask the node for `requests` (path, read?) in one round trip: the copies by number,
    and an error when the node could not be asked or answered nonsense."""
    if not requests:
        return {}, None
    sink = _Collect(reply_limit(len(requests)))
    r = runner.run(node, node_command(dest),
                   RunOptions(timeout=timeout, stdin=request_lines(requests), sink=sink))
    if sink.overflow:
        return {}, f"the node's diff reply exceeded {sink.limit} bytes; nothing of it shown"
    if not r.ok:
        _, error = parse_reply(sink.text(), len(requests))
        return {}, error or f"fetching the node's copies failed: {r.summary()}"
    return parse_reply(sink.text(), len(requests))


# ---- the local side ---------------------------------------------------------------------------

def read_local(source: str, rel: str) -> LocalCopy:
    """The local file `rel` under `source`, never through a symlink, at most FILE_CAP bytes
    (a bigger file: its size only)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(source, flags | os.O_DIRECTORY)
    except OSError as exc:
        return LocalCopy(error=f"cannot read the source: {exc.strerror}")
    try:
        parts = rel.split("/")
        for part in parts[:-1]:
            nxt = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        nxt = os.open(parts[-1], flags, dir_fd=fd)
        os.close(fd)
        fd = nxt
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return LocalCopy(error="the local copy is not a regular file")
        if info.st_size > FILE_CAP:
            return LocalCopy(size=info.st_size)
        chunks: list[bytes] = []
        got = 0
        while got <= FILE_CAP:
            chunk = os.read(fd, FILE_CAP + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        data = b"".join(chunks)
        if len(data) > FILE_CAP:
            return LocalCopy(size=len(data))
        return LocalCopy(data=data, size=len(data))
    except OSError as exc:
        return LocalCopy(error=f"cannot read the local copy: {exc.strerror}")
    finally:
        os.close(fd)


# ---- rendering --------------------------------------------------------------------------------

def text_of(data: bytes) -> str | None:
    """`data` as text, or None when it is binary (a NUL byte, or not UTF-8)."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def unified(path: str, node_id: str, old: str | None, new: str) -> str:
    """The unified diff of the node's text `old` (None: no such file) against the local
    `new`, labelled a/PATH (the node's) and b/PATH (local): `patch -p1` in the node's
    directory would apply it."""
    before = old.splitlines(keepends=True) if old is not None else []
    after = new.splitlines(keepends=True)
    lines = difflib.unified_diff(before, after,
                                 fromfile=f"a/{path}\t{node_id}" if old is not None
                                 else "/dev/null", tofile=f"b/{path}\tlocal")
    out = []
    for line in lines:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def too_large(path: str, size: int) -> FileDiff:
    return FileDiff(path, "too-large", message=f"diff too large ({size} bytes)")


def render(path: str, node_id: str, local: LocalCopy, copy: NodeCopy,
           *, new: bool) -> FileDiff | None:
    """One file's FileDiff from its two copies (None: same content). `new`: rsync would
    create it."""
    if copy.status == "symlink":
        return FileDiff(path, "refused", message="a symlink on the node: not followed,"
                        " not read")
    if copy.status in ("unreadable", "missing"):
        return FileDiff(path, "refused", message="the node's copy could not be read"
                        if copy.status == "unreadable" else "the node did not answer for it")
    if local.error is not None:
        return FileDiff(path, "refused", message=local.error)
    if local.data is None:
        return too_large(path, local.size)
    if copy.status == "budget":
        # The file may be small: the node had already sent its NODE_BUDGET for others.
        return FileDiff(path, "too-large", message=f"not read: {NODE_BUDGET // 1024} KiB"
                        " were already read from this node")
    if copy.status == "big":
        return too_large(path, max(copy.size or 0, local.size))
    if new or copy.status in ("absent", "notfile", "present"):
        text = text_of(local.data)
        if text is None:
            return FileDiff(path, "binary", message=f"{BINARY} (new, {local.size} bytes)")
        return FileDiff(path, "new", diff=unified(path, node_id, None, text))
    old = copy.data or b""
    if old == local.data:
        return None
    old_text, new_text = text_of(old), text_of(local.data)
    if old_text is None or new_text is None:
        return FileDiff(path, "binary", message=BINARY)
    return FileDiff(path, "changed", diff=unified(path, node_id, old_text, new_text))


def capped(files: Sequence[FileDiff], cap: int = DIFF_CAP) -> tuple[FileDiff, ...]:
    """Past `cap` bytes of diff text on one node, each further diff is named too large."""
    out: list[FileDiff] = []
    total = 0
    for f in files:
        size = len(f.diff.encode())
        if f.diff and total + size > cap:
            # Not this file's size: the node's diffs so far filled the cap.
            out.append(FileDiff(f.path, "too-large", message=f"diff not shown ({size} bytes):"
                                f" this node's diffs passed {cap // 1024} KiB"))
            continue
        total += size
        out.append(f)
    return tuple(out)


def compare(runner: Runner, node: Node, source: str, dest: str,
            changes: Sequence[FileChange], *, timeout: float | None) -> NodeDiff:
    """The diff of one node: the dry run's `changes` against the node's copies in `dest`,
    fetched in one round trip (none when only deletions or nothing would change)."""
    files: list[FileDiff | None] = []
    asks: list[tuple[str, bool]] = []
    pending: list[tuple[int, str, bool]] = []  # (index in files, path, new)
    for change in wanted(changes):
        rel = safe_path(change.path)
        if rel is None:
            files.append(FileDiff(change.path, "refused",
                                  message="not a plain relative path"))
        elif change.deleted:
            files.append(FileDiff(change.path, "deleted"))
        else:
            pending.append((len(files), rel, change.created))
            asks.append((rel, not change.created))
            files.append(None)
    copies, error = fetch(runner, node, posixpath.normpath(dest), asks, timeout=timeout)
    if error is not None:
        return NodeDiff(error=error)
    same = 0
    for n, (slot, rel, new) in enumerate(pending):
        got = render(rel, node.id, read_local(source, rel), copies.get(n, NodeCopy("missing")),
                     new=new)
        if got is None:
            same += 1
        files[slot] = got
    return NodeDiff(files=capped([f for f in files if f is not None]), same=same)
