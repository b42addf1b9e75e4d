"""The dispatcher's cache of engine preflights: can node N run engine E (its tools on PATH,
its requires importable)? One SSH round trip per (node, engine), so never inside a claim's
transaction: routing reads what is known, and a node not checked yet is checked here in the
background, then the dispatcher is woken to route again.

A pass is kept ~10 min; a failure 1 min (an operator who installs the tool sees the node
used soon), and a node that lost a job is checked again (`forget`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from skeleton_app.engines import Engine
from skeleton_app.errors import NodeError
from skeleton_app.nodes import Node

PASS_TTL = 600.0
FAIL_TTL = 60.0


def needs_check(engine: Engine) -> bool:
    """An engine without tools or requires has nothing to check: it passes everywhere."""
    return bool(engine.tools or engine.requires)


class PreflightCache:
    """Thread-safe. `check(node, engine)` is node.preflight over the dispatcher's runner."""

    def __init__(self, check: Callable[[Node, Engine], str | None], *,
                 on_done: Callable[[], None] = lambda: None,
                 on_event: Callable[[str], None] = lambda line: None,
                 clock: Callable[[], float] = time.monotonic,
                 pass_ttl: float = PASS_TTL, fail_ttl: float = FAIL_TTL):
        self._check = check
        self._on_done = on_done
        self._on_event = on_event
        self._clock = clock
        self._pass_ttl, self._fail_ttl = pass_ttl, fail_ttl
        self._lock = threading.Lock()
        self._results: dict[tuple[str, Engine], tuple[str | None, float]] = {}
        self._running: set[tuple[str, Engine]] = set()

    def results(self, engine: Engine, node_ids: Iterable[str]) -> dict[str, str | None]:
        """What is known and fresh for these nodes (a node missing: not checked yet)."""
        if not needs_check(engine):
            return dict.fromkeys(node_ids)
        now = self._clock()
        out: dict[str, str | None] = {}
        with self._lock:
            for node_id in node_ids:
                known = self._results.get((node_id, engine))
                if known is not None and known[1] > now:
                    out[node_id] = known[0]
        return out

    def schedule(self, node: Node, engine: Engine) -> None:
        """Check in a background thread unless a check of this pair already runs."""
        key = (node.id, engine)
        with self._lock:
            if key in self._running or not needs_check(engine):
                return
            self._running.add(key)
        threading.Thread(target=self._run, args=(node, engine), daemon=True,
                         name=f"preflight {node.id} {engine.name}").start()

    def check_now(self, node: Node, engine: Engine) -> str | None:
        """Check in this thread (tests, and `schedule`'s thread)."""
        try:
            result = self._check(node, engine)
        except NodeError as exc:
            result = f"preflight of {engine.name} on {node.id} failed: {exc.kind}: {exc}"
        ttl = self._pass_ttl if result is None else self._fail_ttl
        with self._lock:
            self._results[(node.id, engine)] = (result, self._clock() + ttl)
        if result is not None:
            self._on_event(f"preflight: {result}")
        return result

    def _run(self, node: Node, engine: Engine) -> None:
        try:
            self.check_now(node, engine)
        except Exception as exc:  # a bug in a check must not kill the dispatcher: say it
            with self._lock:
                self._results[(node.id, engine)] = (f"preflight error: {exc!r}",
                                                    self._clock() + self._fail_ttl)
        finally:
            with self._lock:
                self._running.discard((node.id, engine))
            self._on_done()

    def forget(self, node_id: str) -> None:
        """Check this node again before its next job (it lost one, or failed a command)."""
        with self._lock:
            for key in [k for k in self._results if k[0] == node_id]:
                del self._results[key]

    def snapshot(self) -> Mapping[tuple[str, str], Any]:
        with self._lock:
            return {(k[0], k[1].name): v[0] for k, v in self._results.items()}
