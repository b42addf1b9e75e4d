"""The cluster: settings + nodes + a pooled connector, and bounded fan-out.

`Cluster` is what every operation takes. It selects nodes, fans a per-node function out
over at most `fanout` threads, and gathers one `NodeResult` per node into a
`ClusterResult`; an exception in one node's function becomes that node's result and never
hides another's.

Ctrl-C (or `Cluster.cancel()`, see `skeleton_app.cancel`): no node starts after it, running
nodes stop theirs and come back `interrupted`; a KeyboardInterrupt in the waiting thread
does the same before it goes on up.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING, Any

from skeleton_app import cancel
from skeleton_app.config import Settings, check_identity_files, load_config
from skeleton_app.errors import NodeError, NodeErrorKind, SelectionError
from skeleton_app.nodes import Node, select
from skeleton_app.results import ClusterResult, NodeResult, failure
from skeleton_app.ssh.runner import Runner

if TYPE_CHECKING:
    from skeleton_app.ops.jobs.queue import Jobs
    from skeleton_app.registry import Registry
    from skeleton_app.ssh.pool import Connector

NodeFn = Callable[[Node], NodeResult[Any]]


def fan_out(
    nodes: Sequence[Node],
    fn: NodeFn,
    *,
    fanout: int,
    operation: str = "",
    on_result: Callable[[NodeResult[Any]], None] | None = None,
    warnings: Iterable[str] = (),
) -> ClusterResult[Any]:
    """Run `fn(node)` for every node with at most `fanout` in flight; collect every result."""
    started = time.monotonic()
    results: dict[str, NodeResult[Any]] = {}

    # The caller's token, also in the workers: the keeper serves each client's command
    # under a token of its own (`cancel.scoped`), which pool threads would not inherit.
    own = cancel.token()

    # The workers wait until every node is submitted. A thread's start() waits for the new
    # thread to run, and while earlier workers hold the GIL (SSH crypto), each start waited
    # up to a switch interval: measured 2-3 ms per node, 70 ms of a warm command on 32.
    go = threading.Event()

    def guarded(node: Node) -> NodeResult[Any]:
        go.wait()
        t0 = time.monotonic()
        if own.cancelled:
            return failure(node.id, NodeErrorKind.INTERRUPTED,
                           f"{cancel.INTERRUPTED} before it started")
        try:
            with cancel.scoped(own):
                return fn(node)
        except NodeError as exc:
            return failure(node.id, exc.kind, exc.message, time.monotonic() - t0)
        except Exception as exc:  # a bug in one node's handling must not lose the others
            return failure(node.id, NodeErrorKind.ERROR, f"{type(exc).__name__}: {exc}",
                           time.monotonic() - t0)

    # Even one node runs in a worker: the waiting thread must stay free to take Ctrl-C.
    workers = max(1, min(fanout, len(nodes)))
    with cancel.executor(workers, "fanout") as pool:
        try:
            pending: dict[Future[NodeResult[Any]], Node] = {
                pool.submit(guarded, n): n for n in nodes}
        finally:
            go.set()  # also on an interrupt mid-submit: the pool's exit waits for them
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                node = pending.pop(fut)
                r = fut.result()
                results[node.id] = r
                if on_result:
                    on_result(r)
    ordered = [results[n.id] for n in nodes]
    return ClusterResult(ordered, operation=operation, duration=time.monotonic() - started,
                         warnings=warnings)


class Cluster:
    """Settings, the known nodes, and a pooled SSH connector. Close it (or use `with`)."""

    def __init__(self, settings: Settings, nodes: Sequence[Node] | None = None, *,
                 connector: Runner | None = None, warnings: Iterable[str] = ()):
        self.settings = settings
        self.nodes: tuple[Node, ...] = tuple(settings.nodes if nodes is None else nodes)
        self.warnings: tuple[str, ...] = tuple(warnings)
        self._connector = connector
        self._lock = threading.Lock()
        self._jobs: Jobs | None = None

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        settings: Settings | None = None,
        registry: Registry | None = None,
        connector: Runner | None = None,
    ) -> Cluster:
        """Load the settings and the nodes (from the registry when one is configured:
        `registry`, the caller's open connection, else one opened and closed here)."""
        settings = settings or load_config(path, env=env, overrides=overrides)
        nodes: Sequence[Node] = settings.nodes
        warnings: Sequence[str] = ()
        if registry is not None:
            nodes, warnings = registry.list_nodes(enabled_only=True)
        elif settings.registry.dsn:
            from skeleton_app.registry import open_registry  # psycopg only when needed

            own = open_registry(settings)
            try:
                nodes, warnings = own.list_nodes(enabled_only=True)
            finally:
                own.close()
        env = os.environ if env is None else env
        check_identity_files(settings, nodes, source="SKELETON_SSH_IDENTITY_FILE"
                             if "SKELETON_SSH_IDENTITY_FILE" in env else None)
        return cls(settings, nodes, connector=connector, warnings=warnings)

    @property
    def connector(self) -> Runner:
        with self._lock:
            if self._connector is None:
                from skeleton_app.ssh.pool import Connector  # paramiko only when needed

                self._connector = Connector(self.settings.ssh)
            return self._connector

    @property
    def jobs(self) -> Jobs:
        """The voice jobs queue (ops/jobs/queue.py), opened on first use."""
        with self._lock:
            if self._jobs is None:
                from skeleton_app.ops.jobs.queue import Jobs  # the layer above: lazily

                self._jobs = Jobs(self)
            return self._jobs

    def select(self, patterns: Sequence[str] = (), *, roles: Sequence[str] = (),
               exclude: Sequence[str] = (),
               failed: Sequence[str] | None = None) -> tuple[Node, ...]:
        """The nodes a selection names (`nodes.select`: every value must name a node;
        `@NAME` is a group of the config's `groups:` section or a role; `@failed` is
        `failed`, when given)."""
        if not self.nodes:
            where = self.settings.source or "the configuration"
            raise SelectionError(f"no nodes configured (in {where} or the registry)")
        return select(self.nodes, patterns, roles=roles, exclude=exclude,
                      groups=dict(self.settings.groups), failed=failed)

    def node(self, ref: str) -> Node:
        """Look a node up by id or host/address (the seed's API accepts both)."""
        for n in self.nodes:
            if n.id == ref:
                return n
        for n in self.nodes:
            if n.host == ref:
                return n
        raise SelectionError(f"unknown node {ref!r}; known nodes: "
                             + (",".join(n.id for n in self.nodes) or "(none)"))

    def map(self, fn: NodeFn, nodes: Sequence[Node] | None = None, *,
            fanout: int | None = None, operation: str = "",
            on_result: Callable[[NodeResult[Any]], None] | None = None) -> ClusterResult[Any]:
        return fan_out(
            self.nodes if nodes is None else nodes, fn,
            fanout=fanout or self.settings.ssh.fanout, operation=operation,
            on_result=on_result,
        )

    def run(self, command: str, nodes: Sequence[Node] | None = None, *,
            timeout: float | None = None, fanout: int | None = None,
            stdin: bytes | None = None, sink: Any = None, operation: str = "exec",
            on_result: Callable[[NodeResult[Any]], None] | None = None) -> ClusterResult[Any]:
        """Run a shell command on the nodes in parallel (bounded by fanout)."""
        from skeleton_app.ssh.runner import RunOptions

        options = RunOptions(timeout=timeout, stdin=stdin, sink=sink)
        connector = self.connector
        return self.map(lambda node: connector.run(node, command, options), nodes,
                        fanout=fanout, operation=operation, on_result=on_result)

    def cancel(self) -> None:
        """Stop what runs on the nodes now (from another thread or a signal handler): the
        process-wide token of `skeleton_app.cancel`; `skeleton_app.cancel.reset()` clears it."""
        cancel.cancel()

    def connection(self, ref: str | Node) -> Any:
        """A connected Fabric `Connection` (pooled) with our host-key policy and timeouts."""
        from skeleton_app.ssh.fabric import connection  # Fabric only when asked for

        node = ref if isinstance(ref, Node) else self.node(ref)
        return connection(self._ssh(), node)

    def group(self, spec: str | Sequence[str] = (), *, roles: Sequence[str] = ()) -> Any:
        """A Fabric `ThreadingGroup` of our (unopened) connections for the selected nodes."""
        from fabric import ThreadingGroup

        from skeleton_app.ssh.fabric import new_connection

        patterns = [spec] if isinstance(spec, str) else list(spec)
        chosen = self.select(patterns, roles=roles)
        return ThreadingGroup.from_connections(
            [new_connection(self._ssh(), n) for n in chosen]
        )

    def _ssh(self) -> Connector:
        """The SSH connector itself, for the Fabric face (a fake runner has none)."""
        from skeleton_app.ssh.pool import Connector

        connector = self.connector
        if not isinstance(connector, Connector):
            raise TypeError(f"Fabric connections need the SSH connector, not {connector!r}")
        return connector

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.close()
        if self._connector is not None:
            self._connector.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
