"""The seam between operations and the transport: the `Runner` protocol.

`Cluster.connector` is a `Runner`. The real one is the pooled Paramiko connector
(`skeleton_app.ssh.pool.Connector`); `skeleton_app.testing.fake.FakeRunner` scripts replies
per node, so the rules that sit on top (the deploy lock conversation, the sync planner, error
translation, exit codes) get unit tests that need no root and no network.

This module imports no Paramiko: operations and the fake import it for the types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from skeleton_app.nodes import Node
from skeleton_app.results import NodeResult

OutputSink = Callable[[str, str, bytes], None]  # (node id, "stdout"|"stderr", chunk)


@dataclass(frozen=True, slots=True)
class RunOptions:
    timeout: float | None = None  # None: settings.op_timeout (unless `unbounded`)
    # Not in repr: it may start with a sudo password (ops/sudo.py), and a repr ends up in
    # logs, assertion messages and tracebacks with locals.
    stdin: bytes | None = field(default=None, repr=False)
    sink: OutputSink | None = None
    # False for clean-up steps that must run even after a cancel (unlocking, removing a
    # run dir): they are bounded by their timeout instead.
    cancellable: bool = True
    # True with timeout None: no command deadline at all (`cluster exec` without --timeout
    # or ssh.command_timeout, as clush/pdsh); keepalive probes still detect a dead node.
    unbounded: bool = False


class Session(Protocol):
    """A command on one node whose stdin stays open: a line conversation (deploy's lock)."""

    def read_line(self, timeout: float, *, cancellable: bool = True) -> str | None: ...

    def send(self, lines: Sequence[str]) -> None: ...

    def request(self, lines: Sequence[str], timeout: float, *,
                cancellable: bool = True) -> str: ...

    def stderr_tail(self) -> str: ...

    def close(self) -> None: ...


class Runner(Protocol):
    """Runs commands on nodes. Node faults come back as data (`NodeResult`) from `run`; the
    other methods raise `NodeError`."""

    def run(self, node: Node, command: str, options: RunOptions = ...) -> NodeResult[Any]: ...

    def session(self, node: Node, command: str, *, what: str = "helper") -> Session: ...

    def hold(self, node: Node, command: str, *,
             cancellable: bool = True) -> Callable[[], None]: ...

    def warm(self, nodes: Iterable[Node]) -> Callable[[], None]: ...

    def discard(self, node: Node) -> None: ...

    def close(self) -> None: ...
