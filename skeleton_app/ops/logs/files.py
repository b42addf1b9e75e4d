"""Writing OUT safely (`OutDir`: every file created through a descriptor of OUT, O_EXCL and
O_NOFOLLOW, renamed into place) and what a node's file holds: a header naming each source
and its state, then each source's bytes."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from skeleton_app.errors import UsageError
from skeleton_app.nodes import Node
from skeleton_app.ops.logs.records import LogSource

MERGED = "merged.log"


class OutDir:
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


def header(node: Node, sources: Sequence[LogSource], filters: str, error: str | None,
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


def body_chunks(sources: Sequence[LogSource], body: BinaryIO | None) -> Iterable[bytes]:
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
