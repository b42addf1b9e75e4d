"""The web page's live log pane: `LogTail`, the nodes' daemon logs as one stream (what
`cluster logs --follow` prints), kept in a bounded ring buffer that clients read from a
cursor (`?after=CURSOR`), and `LogFollower`, the one background follower per server that
fills it.

The follower runs `follow_logs` for each node on a thread of its own, so a node that drops
out (unreachable, restarted) is followed again on its own after `RETRY` seconds, from the
time of its last line, while the others stream on. The node list is asked again every
`RETRY` seconds too (a registry that was down at start, a node added since).
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from skeleton_app.app.views.common import sanitize
from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.errors import SkeletonError
from skeleton_app.nodes import Node
from skeleton_app.ops.logs import follow_logs

CAPACITY = 5000  # lines kept (~1 MB at 200 bytes a line)
MAX_LINE = 4096  # characters of a line shown: the pane is for reading, not for dumps
FIRST_LINES = 20  # each node's last lines shown when the server starts
RETRY = 5.0  # seconds between two attempts to follow a node, or to list the nodes

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_LEVEL = re.compile(r"\b(DEBUG|INFO|WARN(?:ING)?|ERROR|CRITICAL|FATAL)\b")


def line_level(text: str) -> str | None:
    """The level a log line names near its start (the daemon writes `STAMP LEVEL message`),
    None when it names none."""
    found = _LEVEL.search(text[:80])
    if found is None:
        return None
    word = found.group(1)
    return {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(word, word)


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line as received: `cursor` orders every line of the server's life."""

    cursor: int
    at: float  # epoch seconds when it arrived
    node: str
    level: str | None
    text: str

    def as_dict(self) -> dict[str, object]:
        return {"cursor": self.cursor, "at": self.at, "node": self.node, "level": self.level,
                "text": self.text}


class LogTail:
    """The last `capacity` lines of every node, and each node's follower state. Thread-safe:
    the followers' threads add, the request threads read."""

    def __init__(self, capacity: int = CAPACITY):
        self._lines: deque[LogLine] = deque(maxlen=capacity)
        self._next = 1
        self._lock = threading.Lock()
        self._state: dict[str, str] = {}  # node -> "following" or why not
        self._last_at: dict[str, float] = {}

    def add(self, node: str, data: bytes) -> None:
        # Control bytes are made visible as in the terminal (`\x1b`): the page shows text.
        text = sanitize(data.decode("utf-8", "replace"))[:MAX_LINE]
        now = time.time()
        with self._lock:
            self._lines.append(LogLine(self._next, now, node, line_level(text), text))
            self._next += 1
            self._last_at[node] = now
            self._state[node] = "following"

    def set_state(self, node: str, state: str) -> None:
        with self._lock:
            self._state[node] = sanitize(state)[:300]

    def forget(self, keep: Sequence[str]) -> None:
        """Drop the state of nodes no longer listed."""
        with self._lock:
            for node in set(self._state) - set(keep):
                del self._state[node]

    def last_at(self, node: str) -> float | None:
        with self._lock:
            return self._last_at.get(node)

    def states(self) -> dict[str, str]:
        with self._lock:
            return dict(self._state)

    def after(self, cursor: int, *, node: str | None = None, level: str | None = None,
              limit: int = 500) -> tuple[list[LogLine], int, bool]:
        """The lines after `cursor` (oldest first, at most `limit`, the newest ones when more
        are waiting) of `node` (None: every node) at `level` or above (None: every line,
        with a level or without); the cursor to ask from next time; and whether lines after
        `cursor` were already dropped from the buffer (the client fell behind)."""
        floor = LEVELS.index(level) if level in LEVELS else None
        with self._lock:
            lines = list(self._lines)
            newest = self._next - 1
        dropped = bool(lines) and lines[0].cursor > cursor + 1 and cursor > 0
        picked = [ln for ln in lines if ln.cursor > cursor
                  and (node is None or ln.node == node)
                  and (floor is None or (ln.level is not None
                                         and LEVELS.index(ln.level) >= floor))]
        return picked[-limit:], newest, dropped


class LogFollower:
    """One background follower of the nodes' daemon logs per server: `start()`, `stop()`.
    `list_nodes` gives the nodes to follow (it may raise a SkeletonError: the registry is
    down; then the nodes already followed stream on and the list is asked again later)."""

    def __init__(self, settings: Settings, list_nodes: Callable[[], Sequence[Node]],
                 tail: LogTail, *, retry: float = RETRY):
        self._settings = settings
        self._list_nodes = list_nodes
        self._tail = tail
        self._retry = retry
        self._stop = threading.Event()
        self._workers: dict[str, tuple[threading.Thread, threading.Event, float]] = {}
        self._thread = threading.Thread(target=self._supervise, daemon=True,
                                        name="web-log-follower")

    def start(self) -> LogFollower:
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every node's follower (their ssh sessions end: the node scripts stop)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)  # first: it starts no worker after this
        for _thread, stop, _started in list(self._workers.values()):
            stop.set()
        deadline = time.monotonic() + timeout
        for thread, _stop, _started in list(self._workers.values()):
            thread.join(max(0.1, deadline - time.monotonic()))

    def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                nodes = {n.id: n for n in self._list_nodes()}
            except SkeletonError as exc:
                nodes = None
                for node_id in self._workers:
                    if not self._workers[node_id][0].is_alive():
                        self._tail.set_state(node_id, f"waiting for the node list: {exc}")
            if nodes is not None:
                self._tail.forget(list(nodes))
                for node_id, (_thread, stop, _started) in list(self._workers.items()):
                    if node_id not in nodes:
                        stop.set()
                        del self._workers[node_id]
                for node in nodes.values():
                    self._maybe_start(node)
            self._stop.wait(min(self._retry, 1.0) if not self._workers else self._retry)

    def _maybe_start(self, node: Node) -> None:
        known = self._workers.get(node.id)
        now = time.monotonic()
        if known is not None and (known[0].is_alive() or now - known[2] < self._retry):
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._follow, args=(node, stop), daemon=True,
                                  name=f"web-logs-{node.id}")
        self._workers[node.id] = (thread, stop, now)
        thread.start()

    def _follow(self, node: Node, stop: threading.Event) -> None:
        since = self._tail.last_at(node.id)
        self._tail.set_state(node.id, "connecting")

        def on_error(node_id: str, message: str) -> None:
            self._tail.set_state(node_id, f"not followed: {message}")

        try:
            cluster = Cluster(self._settings, [node])
            # Again after a drop-out: from its last line on, not its last N lines again.
            follow_logs(cluster, [node], on_line=self._tail.add, stop=stop, on_error=on_error,
                        lines=FIRST_LINES if since is None else None,
                        since=since + 0.001 if since is not None else None)
        except SkeletonError as exc:
            on_error(node.id, str(exc))
        except Exception as exc:  # a follower thread must never die silently
            on_error(node.id, f"{type(exc).__name__}: {exc}")
