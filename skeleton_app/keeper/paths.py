"""Where the keeper lives: a private directory per user, and the files in it.

`$XDG_RUNTIME_DIR/skeleton` (a tmpfs the login session owns, emptied at logout) when that
directory is ours and private, else `<cache dir>/skeleton/run`. The directory is made 0700;
one that is not ours or that group or others may write to is refused (`KeeperPathError`):
whoever can write there can put a socket of their own where our commands send their work,
stdin and sudo passwords included. So is one under a directory another user may rename
things in (not ours nor root's, or writable by others without the sticky bit): `su` and
`sudo -E` keep the first user's XDG_RUNTIME_DIR, and root may make a directory of its own in
it, which that user can swap for theirs between our check and our connect.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from skeleton_app.errors import UsageError


class KeeperPathError(UsageError):
    """The keeper's directory is unsafe (not ours, or writable by others)."""


@dataclass(frozen=True, slots=True)
class KeeperPaths:
    dir: Path

    @property
    def socket(self) -> Path:
        return self.dir / "keeper.sock"

    @property
    def pid(self) -> Path:
        return self.dir / "keeper.pid"

    @property
    def lock(self) -> Path:
        return self.dir / "keeper.lock"

    @property
    def log(self) -> Path:
        return self.dir / "keeper.log"


def base_dir(env: dict[str, str] | None = None) -> Path:
    """The keeper's directory for this user (not made or checked here)."""
    env = dict(os.environ) if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and _private(runtime):
        return Path(runtime) / "skeleton"
    cache = env.get("XDG_CACHE_HOME")
    root = Path(cache) if cache and os.path.isabs(cache) else Path.home() / ".cache"
    return root / "skeleton" / "run"


def _private(path: str) -> bool:
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


def _check_ancestors(path: Path) -> None:
    """KeeperPathError when another user could rename `path` (or a directory above it)."""
    me = os.getuid()
    here = Path(os.path.realpath(path.parent))
    for parent in (here, *here.parents):
        try:
            st = os.stat(parent)
        except OSError as exc:
            raise KeeperPathError(f"keeper directory {path}: {parent}: {exc.strerror}"
                                  ) from None
        if st.st_uid not in (0, me):
            raise KeeperPathError(f"keeper directory {path}: {parent} belongs to uid"
                                  f" {st.st_uid}, not to us or root")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            raise KeeperPathError(f"keeper directory {path}: {parent} is writable by group"
                                  f" or others (mode {stat.S_IMODE(st.st_mode):o})")


def check_dir(path: Path) -> None:
    """KeeperPathError unless `path` is a real directory of ours that nobody else may write
    nor rename (see the module docstring)."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise KeeperPathError(f"keeper directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise KeeperPathError(f"keeper directory {path} is not a directory")
    if st.st_uid != os.getuid():
        raise KeeperPathError(f"keeper directory {path} belongs to uid {st.st_uid}, not to us")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KeeperPathError(f"keeper directory {path} is writable by group or others"
                              f" (mode {stat.S_IMODE(st.st_mode):o})")
    _check_ancestors(path)


def keeper_paths(env: dict[str, str] | None = None, *, make: bool = True) -> KeeperPaths:
    """The keeper's paths, the directory made 0700 (`make`) and checked."""
    path = base_dir(env)
    if make:
        with contextlib.suppress(FileExistsError):  # not a directory: check_dir says so
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_dir(path)
    return KeeperPaths(path)
