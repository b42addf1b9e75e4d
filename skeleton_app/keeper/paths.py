"""Where the keeper lives: a private directory per user, and the files in it (where, and
why a directory is refused: `locate`)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from skeleton_app.errors import UsageError
from skeleton_app.keeper import locate


class KeeperPathError(UsageError):
    """The keeper's directory is unsafe (not ours, or writable by others)."""


@dataclass(frozen=True, slots=True)
class KeeperPaths:
    dir: Path

    @property
    def socket(self) -> Path:
        return self.dir / locate.SOCKET

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
    return Path(locate.base_dir(dict(os.environ) if env is None else env))


def check_dir(path: Path) -> None:
    """KeeperPathError unless `path` is a real directory of ours that nobody else may write
    nor rename (`locate`)."""
    try:
        locate.check_dir(str(path))
    except locate.UnsafeDir as exc:
        raise KeeperPathError(str(exc)) from None


def keeper_paths(env: dict[str, str] | None = None, *, make: bool = True) -> KeeperPaths:
    """The keeper's paths, the directory made 0700 (`make`) and checked."""
    path = base_dir(env)
    if make:
        with contextlib.suppress(FileExistsError):  # not a directory: check_dir says so
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_dir(path)
    return KeeperPaths(path)
