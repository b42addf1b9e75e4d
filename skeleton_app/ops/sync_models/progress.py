"""Progress events of a sync (`SyncProgress`), reported to the caller's `on_progress` from
every worker thread in turn, and the poller that measures bytes arriving during a transfer.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from skeleton_app.ops.sync_models.chain import Job, Target
from skeleton_app.ops.sync_models.paths import STAGE
from skeleton_app.ops.sync_models.remote import Remote

POLL_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class SyncProgress:
    """One progress event for one target. `phase`: preflight, up-to-date, refused, transfer,
    verify, done, failed. `done`/`total` are bytes still to move for this target."""

    node: str
    phase: str
    done: int = 0
    total: int = 0
    rate: float = 0.0  # bytes per second since the transfer started
    message: str = ""


ProgressFn = Callable[[SyncProgress], None]


class Reporter:
    """Calls `on_progress` (if any) one event at a time."""

    def __init__(self, on_progress: ProgressFn | None):
        self.on_progress = on_progress
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.on_progress is not None

    def __call__(self, target: Target, phase: str, done: int = 0, total: int = 0,
                 rate: float = 0.0, message: str = "") -> None:
        if self.on_progress is not None:
            with self._lock:
                self.on_progress(SyncProgress(target.node.id, phase, done, total, rate,
                                              message))


class Poller:
    """Reports the bytes arriving in each member's staging directory once a second."""

    def __init__(self, report: Reporter, remote: Remote, paths: Mapping[str, str], job: Job):
        self.report = report
        self.remote = remote
        self.paths = paths
        self.job = job
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="models-progress")
        self._started = time.monotonic()

    def __enter__(self) -> Poller:
        if self.report.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_INTERVAL):
            for t in self.job.members:
                if self._stop.is_set():
                    return
                path = shlex.quote(f"{self.paths[t.node.id]}/{STAGE}")
                r = self.remote.shell(t.node, f"du -sb -- {path} 2>/dev/null", 10)
                if r.exit_code not in (0, 1) or not r.stdout.strip():
                    continue
                try:
                    now_bytes = int(r.stdout.split()[0])
                except ValueError:
                    continue
                done = max(0, min(self.job.total, now_bytes - t.staged_base))
                rate = done / max(time.monotonic() - self._started, 1e-6)
                self.report(t, "transfer", done, self.job.total, rate)
