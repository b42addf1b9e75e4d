"""The nodes that hold a verified copy and may send it, each serving at most `cap` streams
at once (a sender's uplink is shared by its streams).

Only the source and targets published in this run are holders: a copy that was never checked
in this run never spreads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from skeleton_app.nodes import Node


class Holders:
    """Nodes that hold a verified copy, each serving at most `cap` streams at once."""

    def __init__(self, cap: int):
        self.cap = cap
        self._load: dict[str, int] = {}
        self._nodes: dict[str, Node] = {}
        self._cond = threading.Condition()

    def add(self, node: Node) -> None:
        with self._cond:
            self._nodes[node.id] = node
            self._load.setdefault(node.id, 0)
            self._cond.notify_all()

    def remove(self, node: Node) -> None:
        with self._cond:
            self._nodes.pop(node.id, None)
            self._cond.notify_all()

    def ids(self) -> set[str]:
        with self._cond:
            return set(self._nodes)

    def acquire(self, busy: Callable[[], bool],
                usable: Callable[[Node], bool] | None = None) -> Node | None:
        """The least loaded holder with a free slot; waits while `busy()` says other jobs may
        still free one or add a holder. None when there is no holder at all, or none that is
        `usable` (one known unable to reach the receiver: the next round re-plans it)."""
        with self._cond:
            while True:
                nodes = [n for n in self._nodes.values() if usable is None or usable(n)]
                if self._nodes and not nodes:
                    return None
                free = [n for n in nodes if self._load[n.id] < self.cap]
                if free:
                    node = min(free, key=lambda n: self._load[n.id])
                    self._load[node.id] += 1
                    return node
                if not self._nodes or not busy():
                    return None
                self._cond.wait(0.5)

    def release(self, node: Node) -> None:
        with self._cond:
            self._load[node.id] = max(0, self._load.get(node.id, 0) - 1)
            self._cond.notify_all()
