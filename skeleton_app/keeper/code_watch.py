"""Whether the keeper's code changed on disk since it started (`CodeWatch`): a keeper that
serves whole commands must not go on running old code after a `git pull` or a `pip install
-U` (it declines, and leaves; the next command starts a new one)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import skeleton_app

# What CodeWatch watches: modules, node payloads, the registry's migrations (read from disk
# at every registry open: an upgrade's new migration with the old code would pass its check).
_CODE = (".py", ".sh", ".sql")


def package_dir() -> str:
    return os.path.realpath(os.path.dirname(skeleton_app.__file__))


class CodeWatch:
    """Whether the source under `root` changed since this watch was made: the inode, size,
    mtime and ctime of every source file (ctime: a release copied in with its build's
    mtimes), and the source names in every directory. A directory's
    mtime is the cheap first check; when it moved, its listing decides (Python making a
    `__pycache__` there is no change of code). About 250 stat calls (~0.3 ms) a check."""

    def __init__(self, root: str, libraries: Sequence[str] = ()):
        """`libraries`: directories whose entries (not their trees) are watched too: the
        site-packages of the keeper's Paramiko, psycopg, PyYAML..., where `pip install -U`
        replaces a package's `*.dist-info` directory with one of the new version's name."""
        self.root = root
        self._files: list[str] = []
        self._dirs: dict[str, tuple[int, list[str]]] = {}
        for directory, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            self._dirs[directory] = (os.stat(directory).st_mtime_ns, _sources(directory))
            self._files += [os.path.join(directory, f) for f in sorted(files)
                            if f.endswith(_CODE)]
        for directory in libraries:
            with contextlib.suppress(OSError):
                self._dirs[directory] = (os.stat(directory).st_mtime_ns, _sources(directory))
        self._facts = self._file_facts()

    def _file_facts(self) -> list[tuple[int, int, int, int]] | None:
        try:
            return [(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    for st in map(os.stat, self._files)]
        except OSError:
            return None  # a file went away

    def changed(self) -> bool:
        if self._facts is None or self._file_facts() != self._facts:
            return True
        for directory, (mtime, names) in list(self._dirs.items()):
            try:
                now = os.stat(directory).st_mtime_ns
                if now != mtime:
                    if _sources(directory) != names:
                        return True
                    self._dirs[directory] = (now, names)
            except OSError:
                return True
        return False


def library_dirs() -> list[str]:
    """Where the keeper's third-party packages come from (their site-packages)."""
    import paramiko
    import yaml

    return sorted({os.path.dirname(os.path.dirname(os.path.realpath(m.__file__ or "")))
                   for m in (paramiko, yaml)})


def _sources(directory: str) -> list[str]:
    """What in `directory` is code (`_CODE` files) and its subdirectories but __pycache__."""
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.name != "__pycache__" and (
            e.name.endswith(_CODE) or e.is_dir(follow_symlinks=False)))
