"""Starting a keeper: detached, in a session of its own, its output to the keeper's log.

Race-safe: two commands that find no keeper at the same moment both start one; each new
keeper takes the lock file, and the second finds the first answering and exits at once
(`server.Keeper.bind`). A command never waits for the keeper it started: it runs its own
work directly (cold, as without warm mode) and the next command finds the keeper. A CLI
command starts it as it exits (`start_at_exit`), after its output: the keeper's start-up
(~0.2 s of CPU, importing Paramiko) then never competes with the command's own work.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from pathlib import Path

from skeleton_app.keeper.paths import KeeperPaths

_LOG_LIMIT = 1 << 20  # the log is started over past 1 MiB (one line per connection event)


def start(paths: KeeperPaths, persist: float) -> None:
    """Start `python -m skeleton_app.keeper serve` for `paths`; do not wait for it."""
    try:
        if paths.log.stat().st_size > _LOG_LIMIT:
            paths.log.replace(paths.log.with_suffix(".log.1"))
    except OSError:
        pass
    # The keeper runs in / (it must not hold the command's directory busy): the package is
    # found from where this one was loaded, installed or not.
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        subprocess.Popen(
            [sys.executable, "-m", "skeleton_app.keeper", "serve", "--dir", str(paths.dir),
             "--persist", repr(persist)],
            stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, cwd="/", env=env,
            start_new_session=True, close_fds=True)
    finally:
        os.close(fd)


_pending: dict[str, tuple[KeeperPaths, float]] = {}


def start_at_exit(paths: KeeperPaths, persist: float) -> None:
    """Start a keeper for `paths` when this process exits (`start_pending`: the CLI calls
    it after its last output; atexit otherwise). Once per directory."""
    if not _pending:
        atexit.register(start_pending)
    _pending[str(paths.dir)] = (paths, persist)


def start_pending() -> None:
    """Start the keepers `start_at_exit` asked for (each once)."""
    while _pending:
        _, (paths, persist) = _pending.popitem()
        start(paths, persist)
