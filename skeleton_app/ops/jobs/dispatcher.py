"""The dispatcher: claims jobs, routes each to the best node, runs it there, renews its lease,
ends it exactly once (fenced), fails over when a node is lost, kills orphans.

Several dispatchers may run at once, on several machines: the database serialises claims
(registry/jobs.py), and a job's end is written only with its current lease token.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from skeleton_app.registry.job_records import JobEvent, JobStore

if TYPE_CHECKING:
    from skeleton_app.cluster import Cluster


@dataclass(frozen=True, slots=True)
class DispatchOutcome:
    """What one dispatcher did until it stopped."""

    dispatcher: str
    claimed: int
    done: int
    failed: int
    lost: int
    cancelled: int
    seconds: float


class Dispatcher:
    """Run jobs until stopped. `run()` blocks; `start()` runs it in a thread (for --wait)."""

    def __init__(self, cluster: Cluster, store: JobStore, *, dispatcher_id: str | None = None,
                 on_event: Callable[[str], None] | None = None):
        raise NotImplementedError

    @property
    def id(self) -> str:
        raise NotImplementedError

    def run(self, stop: threading.Event | None = None) -> DispatchOutcome:
        """Dispatch until `stop` is set (or Ctrl-C); running jobs are left to their leases."""
        raise NotImplementedError

    def start(self) -> Callable[[], DispatchOutcome]:
        """Run in a background thread; the returned function stops it and returns the outcome."""
        raise NotImplementedError

    def on_notify(self, event: JobEvent) -> None:
        raise NotImplementedError
