"""Live progress plumbing shared by the front ends: what a progress display must offer, and
how an application command drives one around an operation.

The displays themselves are views (`app.views.deploy.DeployProgress`,
`SyncModelsProgress`); this module only knows their shape, so `app.commands` needs neither
Rich nor the views.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

EventT = TypeVar("EventT", contravariant=True)


class LiveProgress(Protocol[EventT]):
    """A display an operation feeds events to while it runs (a context manager that draws
    between enter and exit). `enabled` False: nothing to draw (piped, `--json`)."""

    @property
    def enabled(self) -> bool: ...

    def update(self, event: EventT) -> None: ...

    def __enter__(self) -> object: ...

    def __exit__(self, *exc: object) -> None: ...


@contextlib.contextmanager
def live(progress: LiveProgress[EventT] | None) -> Iterator[Callable[[EventT], None] | None]:
    """Draw `progress` for the duration of the block and give its `update` for the
    operation's `on_progress`; None (and nothing drawn) when there is no display or it is
    disabled, so the operation skips building events nobody reads."""
    if progress is None or not progress.enabled:
        yield None
        return
    with progress:
        yield progress.update
