"""A `Runner` with scripted replies, for fast unit tests of the rules above the transport.

Like httpx's `MockTransport`: one handler function sees every call and says what the node
answers. Nothing here touches the network, so tests that use it need no root.

    def node(call: Call) -> Reply:
        if call.node == "n2":
            return NodeError(NodeErrorKind.UNREACHABLE, "no route to host")
        return Reply(0, stdout="hostname=n1\\n")

    cluster = Cluster(settings, nodes, connector=FakeRunner(node))

A handler may return a `Reply`, a `NodeResult` (used as is, filed under the node asked), or
a `NodeError` (the node's failure, as the real connector reports it); an exception it raises
reaches the fan-out as one from a real transport would (one node's bug, never its
siblings'). `by_node({"n2": NodeError(...)}, default=Reply(0))` scripts a fixed answer per
node. `session()` conversations are scripted with a list of reply lines per node
(`sessions={"n1": ["ok locked", "ok done"]}`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.results import NodeResult, failure
from skeleton_app.ssh.runner import RunOptions

_DEFAULT = RunOptions()


@dataclass(frozen=True, slots=True)
class Call:
    """One command an operation ran: which node, what, with what on stdin."""

    node: str
    command: str
    stdin: bytes | None = None
    kind: str = "run"  # "run" | "session" | "hold"


@dataclass(frozen=True, slots=True)
class Reply:
    """What a node answers to one `run`."""

    exit_code: int = 0
    stdout: str = ""
    stderr: str = ""


Answer = Reply | NodeResult[None] | NodeError  # a run has no typed outcome
Handler = Callable[[Call], Answer]


def always(reply: Reply) -> Handler:
    """A handler that gives every call the same reply."""
    return lambda _call: reply


def by_node(answers: Mapping[str, Answer], *, default: Answer | None = None) -> Handler:
    """A handler that gives each node its fixed answer (`default` for the others; a node
    with neither is a bug in the test, reported as that node's error)."""

    def handler(call: Call) -> Answer:
        answer = answers.get(call.node, default)
        if answer is None:
            raise LookupError(f"no scripted answer for node {call.node!r}")
        return answer

    return handler


class FakeSession:
    """A scripted line conversation: each `read_line` gives the next scripted line."""

    def __init__(self, node: Node, lines: Iterable[str | NodeError]):
        self.node = node
        self._lines = list(lines)
        self.sent: list[str] = []
        self.closed = False

    def read_line(self, timeout: float, *, cancellable: bool = True) -> str | None:
        if not self._lines:
            return None  # EOF: the node's helper exited
        line = self._lines.pop(0)
        if isinstance(line, NodeError):
            line.node = self.node.id
            raise line
        return line

    def send(self, lines: Sequence[str]) -> None:
        self.sent.extend(lines)

    def request(self, lines: Sequence[str], timeout: float, *, cancellable: bool = True) -> str:
        self.send(lines)
        reply = self.read_line(timeout, cancellable=cancellable)
        if reply is None:
            raise NodeError(NodeErrorKind.LOST, "the node's helper exited early",
                            node=self.node.id)
        return reply

    def stderr_tail(self) -> str:
        return ""

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeRunner:
    """A `Runner` whose nodes answer through `handler`; every call is recorded in `calls`."""

    handler: Handler = field(default=always(Reply()))
    sessions: Mapping[str, Sequence[str | NodeError]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _record(self, call: Call) -> None:
        with self._lock:  # operations fan out over threads
            self.calls.append(call)

    def commands(self, node: str) -> list[str]:
        """The commands `node` was asked to run, in order."""
        return [c.command for c in self.calls if c.node == node]

    def run(self, node: Node, command: str, options: RunOptions = _DEFAULT) -> NodeResult[None]:
        call = Call(node.id, command, options.stdin)
        self._record(call)
        answer = self.handler(call)
        if isinstance(answer, NodeError):
            return failure(node.id, answer.kind, answer.message)
        if isinstance(answer, NodeResult):
            # As scripted (byte counts, truncation, duration too), under the node asked.
            return dataclasses.replace(answer, node=node.id)
        out, err = answer.stdout, answer.stderr
        return NodeResult(node=node.id, exit_code=answer.exit_code, stdout=out, stderr=err,
                          stdout_bytes=len(out.encode()), stderr_bytes=len(err.encode()))

    def session(self, node: Node, command: str, *, what: str = "helper") -> FakeSession:
        self._record(Call(node.id, command, kind="session"))
        lines = self.sessions.get(node.id)
        if lines is None:
            answer = self.handler(Call(node.id, command, kind="session"))
            if isinstance(answer, NodeError):
                answer.node = node.id
                raise answer
            lines = answer.stdout.splitlines() if isinstance(answer, Reply) else []
        return FakeSession(node, lines)

    def hold(self, node: Node, command: str, *, cancellable: bool = True) -> Callable[[], None]:
        self._record(Call(node.id, command, kind="hold"))
        return lambda: None

    def warm(self, nodes: Iterable[Node]) -> Callable[[], None]:
        return lambda: None

    def discard(self, node: Node) -> None:
        pass

    def close(self) -> None:
        self.closed = True
