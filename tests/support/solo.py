"""`@pytest.mark.solo`: a test that must have the machine's CPUs to itself (it burns them on
purpose, or times something that a busy machine would stretch) runs while the suite's other
xdist workers wait between their tests.

Every test holds the run's lock shared while it runs (tests/conftest.py, autouse); a solo test
first announces itself (a file `solo.want.PID` in the run's directory), so that no worker
starts a new test meanwhile, then takes the lock exclusively, i.e. once the running tests have
ended. Module and session fixtures are made outside the lock. Other suites on the same
machine are not stopped: this only keeps the suite from competing with itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

WAIT_LIMIT = 900.0  # seconds a test waits for announced solo tests before it runs anyway


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _solo_wanted(run_dir: Path) -> bool:
    """Whether a live worker has announced a solo test (a dead one's file is ignored)."""
    for flag in run_dir.glob("solo.want.*"):
        with contextlib.suppress(ValueError):
            if _alive(int(flag.name.rsplit(".", 1)[1])):
                return True
    return False


@contextlib.contextmanager
def gate(run_dir: Path, solo: bool) -> Iterator[None]:
    """Hold the run's lock for one test: exclusively for a solo test, else shared."""
    lock_path = run_dir / "solo.lock"
    with open(lock_path, "a") as lock:
        if solo:
            flag = run_dir / f"solo.want.{os.getpid()}"
            flag.touch()
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
            finally:
                flag.unlink(missing_ok=True)
        else:
            deadline = time.monotonic() + WAIT_LIMIT
            while _solo_wanted(run_dir) and time.monotonic() < deadline:
                time.sleep(0.2)
            fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
