"""Progress events of a deploy (`DeployEvent`) and the thread-safe emitter that hands them to
a live display."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeployEvent:
    """A step of one node's deploy, for live displays. `phase` is one of lock, stop, sync,
    after, commit, start, done, unchanged, failed."""

    node: str
    phase: str
    percent: int | None = None
    bytes: int | None = None
    files: int = 0
    message: str = ""


OnProgress = Callable[[DeployEvent], None]


def emitter(on_progress: OnProgress | None) -> OnProgress:
    """`on_progress` serialised (or a no-op): nodes report from many threads, and displays
    need not be thread-safe."""
    if on_progress is None:
        return lambda event: None
    lock = threading.Lock()

    def emit(event: DeployEvent) -> None:
        with lock:
            on_progress(event)

    return emit
