"""The arguments of `cluster copy` and `cluster fetch`, checked before any node is contacted:
remote paths (absolute or `~/...`), local sources (they must exist), `--mode` (octal).
Each problem is a UsageError (exit 2) naming the value.

    remote_path("~/conf", "REMOTE_DIR")      -> "conf"  (relative: the login's home)
    remote_path("etc", "REMOTE_DIR")         -> UsageError
    parse_mode("0640")                        -> 0o640
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence

from skeleton_app.errors import UsageError

_MODE = re.compile(r"^[0-7]{3,4}\Z")


def _control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def remote_path(text: str, what: str) -> str:
    """`text` as the node should read it: an absolute path as it is, `~/x` as `x` (rsync and
    the ssh session start in the login's home, and nothing expands `~` on the way: remote
    paths travel inside rsync's protocol, or as quoted arguments)."""
    if not text:
        raise UsageError(f"{what} is empty: give an absolute path or ~/PATH")
    if _control(text):
        raise UsageError(f"{what} {text!r} holds a control character")
    if text.startswith("/"):
        return text
    if text == "~":
        return "."
    if text.startswith("~/"):
        rest = text[2:].lstrip("/")
        return rest or "."
    raise UsageError(f"{what} {text!r} must be absolute or start with ~/ (a relative path"
                     " would depend on where the node's shell starts)")


def local_sources(paths: Sequence[str]) -> tuple[str, ...]:
    """The LOCAL arguments of `copy`, each as rsync must see it: a directory without its
    trailing slash (it is copied as itself, as `pdcp -r` and `clush --copy` do), a relative
    path behind `./` (rsync would read `a:b` as a remote host). UsageError naming the first
    one that does not exist."""
    if not paths:
        raise UsageError("copy needs at least one LOCAL file or directory")
    out: list[str] = []
    for path in paths:
        if not path:
            raise UsageError("an empty LOCAL path")
        if _control(path):
            raise UsageError(f"local path {path!r} holds a control character")
        if not os.path.lexists(path):
            raise UsageError(f"no such local file or directory: {path}")
        kind = _special_kind(path)
        if kind is not None:
            # rsync would skip it ("skipping non-regular file") and the copy say ✓, 0 files
            raise UsageError(f"{path} is a {kind}: copy sends files, directories and symlinks")
        trimmed = path.rstrip("/") or "/"
        if trimmed == "/":
            raise UsageError("copying / is not supported: name the directories to copy")
        out.append(trimmed if trimmed.startswith("/") else "./" + trimmed)
    return tuple(out)


def _special_kind(path: str) -> str | None:
    """What `path` is when it is none of a file, a directory or a symlink."""
    mode = os.lstat(path).st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
        return None
    for test, kind in ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return kind
    return "special file"


def parse_mode(text: str | None) -> int | None:
    """`--mode` (octal, 3 or 4 digits: 644, 0640, 2755) as a number; None when not given."""
    if text is None:
        return None
    if not _MODE.match(text.strip()):
        raise UsageError(f"--mode: expected an octal mode such as 0644, got {text!r}")
    return int(text.strip(), 8)


def fetch_names(remotes: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """(path for the node, the name it gets under LOCAL_DIR/<node>/) for each REMOTE: its last
    component. Two REMOTEs with the same last component would land on each other: refused."""
    if not remotes:
        raise UsageError("fetch needs at least one REMOTE path")
    out: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for text in remotes:
        path = remote_path(text, "REMOTE").rstrip("/") or "/"
        name = path.rsplit("/", 1)[-1]
        if path == "/" or name in ("", ".", ".."):
            raise UsageError(f"REMOTE {text!r} names no file or directory to fetch (give its"
                             " path, e.g. /var/log/app)")
        if name in seen:
            raise UsageError(f"REMOTE {seen[name]!r} and {text!r} would both be written to"
                             f" LOCAL_DIR/<node>/{name}: fetch them one at a time")
        seen[name] = text
        out.append((path, name))
    return tuple(out)
