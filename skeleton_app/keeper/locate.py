"""Where the keeper lives and whether that directory is safe, with `os` and `stat` only: the
warm client (`thin`) finds the socket before it imports anything else of ours. `paths`
builds the library's view (`KeeperPaths`, `KeeperPathError`) on these.

`$XDG_RUNTIME_DIR/skeleton` (a tmpfs the login session owns, emptied at logout) when that
directory is ours and private, else `<cache dir>/skeleton/run`. A directory that is not ours
or that group or others may write to is refused: whoever can write there can put a socket
of their own where our commands send their work, stdin and sudo passwords included. So is
one under a directory another user may rename things in (not ours nor root's, or writable
by others without the sticky bit): `su` and `sudo -E` keep the first user's
XDG_RUNTIME_DIR, and root may make a directory of its own in it, which that user can swap
for theirs between our check and our connect.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # not typing's: the warm client (`thin`) loads this module
if TYPE_CHECKING:
    from collections.abc import Mapping

SOCKET = "keeper.sock"


class UnsafeDir(Exception):
    """The keeper's directory is not ours alone (the message says why)."""


def base_dir(env: Mapping[str, str]) -> str:
    """The keeper's directory for this user (not made or checked here)."""
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and private(runtime):
        return os.path.join(runtime, "skeleton")
    cache = env.get("XDG_CACHE_HOME")
    root = cache if cache and os.path.isabs(cache) else os.path.join(
        os.path.expanduser("~"), ".cache")
    return os.path.join(root, "skeleton", "run")


def private(path: str) -> bool:
    """Whether `path` is a directory of ours that nobody else may write (XDG_RUNTIME_DIR as
    the spec has it; another user's, kept by `su`, is not), or none yet (made ours, then
    checked with its parents by `check_dir`)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _check_ancestors(path: str) -> None:
    """UnsafeDir when another user could rename `path` (or a directory above it)."""
    me = os.getuid()
    parent = os.path.realpath(os.path.dirname(path))
    while True:
        try:
            st = os.stat(parent)
        except OSError as exc:
            raise UnsafeDir(f"keeper directory {path}: {parent}: {exc.strerror}") from None
        if st.st_uid not in (0, me):
            raise UnsafeDir(f"keeper directory {path}: {parent} belongs to uid {st.st_uid},"
                            " not to us or root")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            raise UnsafeDir(f"keeper directory {path}: {parent} is writable by group or"
                            f" others (mode {stat.S_IMODE(st.st_mode):o})")
        if parent == "/":
            return
        parent = os.path.dirname(parent)


def check_dir(path: str) -> None:
    """UnsafeDir unless `path` is a real directory of ours that nobody else may write nor
    rename (see the module docstring)."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise UnsafeDir(f"keeper directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDir(f"keeper directory {path} is not a directory")
    if st.st_uid != os.getuid():
        raise UnsafeDir(f"keeper directory {path} belongs to uid {st.st_uid}, not to us")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDir(f"keeper directory {path} is writable by group or others"
                        f" (mode {stat.S_IMODE(st.st_mode):o})")
    _check_ancestors(path)
