"""The nodes as a dispatcher sees them: the registry's rows (every state, so that routing can
say why a node was skipped), re-read about every second; and the orphan sweep over them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Protocol

from skeleton_app.errors import NodeError, RegistryError
from skeleton_app.registry.job_records import JobStore
from skeleton_app.registry.records import NodeEntry
from skeleton_app.ssh.runner import Runner

if TYPE_CHECKING:
    from skeleton_app.config import Settings
    from skeleton_app.ops.jobs.attempt import NodeApi


class NodeSource(Protocol):
    """Where the nodes come from: a `Registry` (registry/protocol.py) has this method."""

    def list_entries(self, *, enabled_only: bool = False
                     ) -> tuple[tuple[NodeEntry, ...], tuple[str, ...]]: ...


class Fleet:
    """The registry's nodes, by id. `entries` is replaced whole on each refresh, so readers
    in other threads always see one consistent snapshot."""

    def __init__(self, settings: Settings, source: NodeSource | None,
                 log: Callable[[str], None]):
        self._settings = settings
        self._source = source
        self._own = False
        self._log = log
        self.entries: dict[str, NodeEntry] = {}

    def refresh(self) -> bool:
        """Read the rows again; True the first time there are any (time to prewarm)."""
        try:
            if self._source is None:
                from skeleton_app.registry import open_registry  # psycopg only when needed

                self._source = open_registry(self._settings,
                                             application_name="skeleton-dispatcher")
                self._own = True
            entries, _warnings = self._source.list_entries(enabled_only=False)
        except RegistryError as exc:
            self._log(f"nodes: {exc}")
            return False
        first = not self.entries and bool(entries)
        self.entries = {e.node.id: e for e in entries}
        return first

    def usable(self) -> list[NodeEntry]:
        """Approved, enabled, with a fresh heartbeat: the nodes worth a preflight."""
        stale_after = self._settings.registry.stale_after
        return [e for e in self.entries.values()
                if e.approved and e.enabled and not e.is_stale(stale_after)]

    def close(self) -> None:
        if self._own and self._source is not None:
            close = getattr(self._source, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
            self._source, self._own = None, False


def sweep_orphans(store: JobStore, node_api: NodeApi, runner: Runner,
                  entries: dict[str, NodeEntry], *, stale_after: float,
                  skip: Collection[tuple[int, int]], halt: threading.Event,
                  log: Callable[[str], None]) -> int:
    """Kill and remove what ended attempts (lost, superseded, cancelled) left on nodes that
    answer again; how many were cleaned. A node still away is tried at the next sweep."""
    cleaned = 0
    for item in store.cleanups():
        if halt.is_set():
            break
        entry = entries.get(item.node_id)
        if (item.job_id, item.n) in skip or entry is None or entry.is_stale(stale_after):
            continue
        try:
            node_api.kill(runner, entry.node, item.job_id, item.n, pgid=item.remote_pgid)
        except NodeError:
            continue
        store.cleaned(item.job_id, item.n)
        cleaned += 1
        log(f"job {item.job_id} attempt {item.n}: orphan killed on {item.node_id}")
    return cleaned
