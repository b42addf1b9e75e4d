"""The controller's own small state files (`$XDG_STATE_HOME/skeleton/`): the last run of
`--node @failed` (app/last_run.py) and the JackTrip link records without a registry
(ops/jack/link_file.py).

Written mode 0600 through a temporary file and a rename (a reader never sees half a file);
read only when it is a regular file (no symlink followed) owned by this user, not writable by
others, in a directory no other user may write: what is read here decides what runs on the
nodes, so a file another user could have written is refused, as ssh refuses such a ~/.ssh.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from skeleton_app.errors import UsageError


def state_dir() -> Path:
    """$XDG_STATE_HOME/skeleton, else ~/.local/state/skeleton (the XDG base directory
    spec: a relative XDG_STATE_HOME is ignored)."""
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "skeleton"


def write_private(path: Path, text: str) -> Path:
    """Replace `path` with `text`, atomically, mode 0600 (its directory made 0700 if
    missing). OSError when it cannot."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def read_private(path: Path, what: str, *, limit: int = 4 << 20) -> str | None:
    """The text of `path` (at most `limit` characters); None when there is no such file.
    UsageError naming the file and `what` it holds when it is unreadable or not private."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {what}: {exc.strerror}"
                         " (a symlink is never followed)") from None
    try:
        problem = _not_private(fd, path.parent)
        if problem is not None:
            raise UsageError(f"{path}: {problem}: not used (delete it, or make it yours"
                             " and not writable by others)")
        with os.fdopen(fd, encoding="utf-8") as fh:
            fd = -1
            return fh.read(limit)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {what}: {exc.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def _not_private(fd: int, directory: Path) -> str | None:
    """Why the open file (or its directory) may hold another user's words, or None."""
    uid = os.geteuid()
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != uid:
        return f"owned by uid {st.st_uid}, not by you"
    if st.st_mode & 0o022:
        return "writable by other users"
    dst = os.stat(directory)
    if dst.st_uid != uid or dst.st_mode & 0o022:
        return f"its directory {directory} may be written by another user"
    return None
