"""Where the keeper lives: a private directory per user, and the files in it.

`$XDG_RUNTIME_DIR/skeleton` (a tmpfs the login session owns, emptied at logout), else
`<cache dir>/skeleton/run`. The directory is made 0700; one that is not ours or that group or
others may write to is refused (`KeeperPathError`): whoever can write there can put a socket
of their own where our commands send their work, stdin and sudo passwords included.
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
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "skeleton"
    cache = env.get("XDG_CACHE_HOME")
    root = Path(cache) if cache and os.path.isabs(cache) else Path.home() / ".cache"
    return root / "skeleton" / "run"


def check_dir(path: Path) -> None:
    """KeeperPathError unless `path` is a real directory of ours that nobody else may write."""
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


def keeper_paths(env: dict[str, str] | None = None, *, make: bool = True) -> KeeperPaths:
    """The keeper's paths, the directory made 0700 (`make`) and checked."""
    path = base_dir(env)
    if make:
        with contextlib.suppress(FileExistsError):  # not a directory: check_dir says so
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_dir(path)
    return KeeperPaths(path)
