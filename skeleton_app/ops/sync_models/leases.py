"""The run's lease on each node it touches, so that a controller that dies (even by SIGKILL)
leaves nothing running on the nodes.

One channel per node, opened with the node's first step (on the pooled connection that step
uses: no handshake of its own, and the channel opens in the background), runs `cat` and then
models.sh's clean-up; the node watches its end. An honest run closes the leases after its own
clean-up; a controller killed with SIGKILL closes them too (its sockets go with it), and every
node then stops what the run left there within about a second, instead of letting the chain
stream on and its control masters linger for ControlPersist's 120 s.
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Callable

from skeleton_app.cluster import Cluster
from skeleton_app.nodes import Node
from skeleton_app.ops.sync_models.paths import SCRIPT


def lease_command(run_dir: str) -> str:
    """The node side of a run's lease: wait for EOF on stdin, then do what `models.sh
    finish` does (stop the run's process groups recorded in its run dir, close its control
    masters, remove the run dir). Nothing is written back: the channel may be gone."""
    run = shlex.quote(run_dir)
    return (f"exec >/dev/null 2>&1; trap '' HUP; cat;"
            f" if [ -f {run}/{SCRIPT} ]; then sh {run}/{SCRIPT} finish {run}/lease; fi;"
            f" rm -rf -- {run}")


class Leases:
    """The leases of one run: taken before a node's first step, released once at the end."""

    def __init__(self, cluster: Cluster, run_dir: str):
        self.cluster = cluster
        self.command = lease_command(run_dir)
        self._lock = threading.Lock()
        self._closers: list[Callable[[], None]] = []
        self._held: set[str] = set()  # nodes whose lease is believed to be open
        self._released = False

    def take(self, node: Node, *, cancellable: bool) -> None:
        """Before the node's first step: NodeError if it cannot be reached (as the step)."""
        with self._lock:
            if self._released or node.id in self._held:
                return
        # A connector injected for scripts or tests may have no `hold`: no lease then.
        hold: Callable[..., Callable[[], None]] | None = getattr(
            self.cluster.connector, "hold", None)
        if hold is None:
            return
        close = hold(node, self.command, cancellable=cancellable)
        with self._lock:
            if not self._released and node.id not in self._held:
                self._held.add(node.id)
                self._closers.append(close)
                return
        close()  # released meanwhile, or another thread took this node's lease first

    def lapse(self, node: Node) -> None:
        """The node's connection broke: its lease may have ended with it (and the node
        cleaned up), so its next step takes a new one. The old one is closed at release."""
        with self._lock:
            self._held.discard(node.id)

    def release(self) -> None:
        with self._lock:
            self._released = True
            closers, self._closers = self._closers, []
        for close in closers:
            close()
