"""Results as values: one `NodeResult` per node, gathered into an immutable `ClusterResult`.

A node's failure is data, never an exception that hides its siblings. The three views
(`ok`, `nonzero`, `errors`) never overlap and together cover every node.

An operation's own per-node facts travel as a typed, frozen *outcome* (`NodeResult.outcome`:
a `StatusReport`, a `DeployOutcome`, ...), never as string keys: `ClusterResult[StatusReport]`
says what a view may read. Outcomes give their JSON form with `as_dict()`; `to_dict` and
`jsonable` below are the one place results become JSON.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

from skeleton_app.errors import ExitCode, NodeErrorKind
from skeleton_app.nodes import fold


class Outcome(Protocol):
    """An operation's typed per-node facts: a frozen dataclass with its JSON form."""

    def as_dict(self) -> dict[str, Any]: ...


OutcomeT = TypeVar("OutcomeT")  # the operation's outcome type (None for plain commands)


@dataclass(frozen=True, slots=True)
class NodeResult(Generic[OutcomeT]):
    """What happened on one node. `exit_code` is None when the command never completed;
    `outcome` is the operation's typed report for the node (None when it has none, e.g. the
    node was unreachable)."""

    node: str
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    error_kind: NodeErrorKind | None = None
    error: str | None = None
    duration: float = 0.0
    # Bytes the node printed in total; stdout/stderr may hold only head and tail of it.
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    truncated: bool = False
    data: Mapping[str, Any] = field(default_factory=dict)  # legacy extras; prefer `outcome`
    outcome: OutcomeT | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None and self.exit_code == 0

    @property
    def ran(self) -> bool:
        return self.error_kind is None and self.exit_code is not None

    def summary(self) -> str:
        if self.error_kind is not None:
            return f"{self.error_kind.value}: {self.error}"
        return f"exit {self.exit_code}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "error_kind": self.error_kind.value if self.error_kind else None,
            "error": self.error,
            "duration": round(self.duration, 6),
            "stdout_bytes": self.stdout_bytes,
            "stderr_bytes": self.stderr_bytes,
            "truncated": self.truncated,
            "data": jsonable(self.outcome if self.outcome is not None else self.data),
        }


def jsonable(value: Any) -> Any:
    """`value` as plain JSON types. Operations put typed values in `NodeResult.data` (a
    NodeStatus, a DaemonReply, tuples, enums, paths): those with `as_dict()` give their own
    form, other dataclasses their fields; anything else unknown becomes its `str()`. The one
    place results become JSON, so every operation's `to_json()` works."""
    if value is None or isinstance(value, bool | int | float | str):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    as_dict = getattr(value, "as_dict", None)
    if callable(as_dict):
        return jsonable(as_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def failure(node: str, kind: NodeErrorKind, message: str,
            duration: float = 0.0) -> NodeResult[Any]:
    """A node where the operation never ran or broke: it has no outcome, so it fits any
    `ClusterResult[OutcomeT]`."""
    return NodeResult(node=node, error_kind=kind, error=message, duration=duration)


class ClusterResult(Mapping[str, NodeResult[OutcomeT]], Generic[OutcomeT]):
    """An immutable mapping node id -> NodeResult, in selection order."""

    __slots__ = ("_results", "duration", "operation", "warnings")

    def __init__(
        self,
        results: Iterable[NodeResult[OutcomeT]],
        *,
        operation: str = "",
        duration: float = 0.0,
        warnings: Iterable[str] = (),
    ):
        self._results: Mapping[str, NodeResult[OutcomeT]] = MappingProxyType(
            {r.node: r for r in results}
        )
        self.operation = operation
        self.duration = duration
        self.warnings: tuple[str, ...] = tuple(warnings)

    def __getitem__(self, node: str) -> NodeResult[OutcomeT]:
        return self._results[node]

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def __repr__(self) -> str:
        return (
            f"<ClusterResult {self.operation or ''} ok={fold(self.ok)} "
            f"nonzero={fold(self.nonzero)} errors={fold(self.errors)}>"
        )

    @property
    def ok(self) -> Mapping[str, NodeResult[OutcomeT]]:
        """Nodes that ran the command and exited 0."""
        return {k: r for k, r in self._results.items() if r.ok}

    @property
    def nonzero(self) -> Mapping[str, NodeResult[OutcomeT]]:
        """Nodes that ran the command and exited non-zero."""
        return {k: r for k, r in self._results.items() if r.ran and r.exit_code != 0}

    @property
    def errors(self) -> Mapping[str, NodeResult[OutcomeT]]:
        """Nodes where the command never ran or broke: unreachable, refused, timeout, ..."""
        return {k: r for k, r in self._results.items() if r.error_kind is not None}

    @property
    def interrupted(self) -> Mapping[str, NodeResult[OutcomeT]]:
        """Nodes stopped by a cancel (Ctrl-C) before they finished (a subset of `errors`)."""
        return {k: r for k, r in self._results.items()
                if r.error_kind == NodeErrorKind.INTERRUPTED}

    def exit_code(self) -> ExitCode:
        """0 all ok; 130 any node interrupted (wins); 4 any node unreachable/refused/timed
        out; 1 any node failed, or refused for a precondition (error kind LOCAL: deploy lock
        held, rsync missing)."""
        if self.interrupted:
            return ExitCode.INTERRUPTED
        kinds = {r.error_kind for r in self._results.values() if r.error_kind is not None}
        if any(kind.exit_code == ExitCode.UNREACHABLE for kind in kinds):
            return ExitCode.UNREACHABLE
        if kinds or self.nonzero:
            return ExitCode.FAILED
        return ExitCode.OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "duration": round(self.duration, 6),
            "exit_code": self.exit_code(),
            "ok": list(self.ok),
            "nonzero": list(self.nonzero),
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "nodes": {k: r.to_dict() for k, r in self._results.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def outcomes(self) -> Mapping[str, OutcomeT]:
        """Node id -> outcome, for the nodes that have one, in selection order."""
        return {k: r.outcome for k, r in self._results.items() if r.outcome is not None}


def gather_output(result: ClusterResult[Any]) -> list[tuple[str, str]]:
    """Group identical stdout (+stderr) across nodes: [(folded node set, text)], clush -b style.

    Nodes that printed nothing are left out: there is nothing to show for them.
    """
    groups: dict[str, list[str]] = {}
    for node, r in result.items():
        if r.error_kind is not None:
            continue
        text = r.stdout + (r.stderr if r.stderr else "")
        if text:
            groups.setdefault(text, []).append(node)
    return [(fold(nodes), text) for text, nodes in groups.items()]


def group_exit_codes(result: ClusterResult[Any]) -> list[tuple[int, str]]:
    codes: dict[int, list[str]] = {}
    for node, r in result.items():
        if r.ran and r.exit_code is not None:
            codes.setdefault(r.exit_code, []).append(node)
    return [(code, fold(nodes)) for code, nodes in sorted(codes.items())]


def group_errors(result: ClusterResult[Any]) -> list[tuple[str, str]]:
    """[(folded node set, 'kind: message')] for nodes that never ran or broke."""
    msgs: dict[str, list[str]] = {}
    for node, r in result.errors.items():
        msgs.setdefault(r.summary(), []).append(node)
    return [(fold(nodes), msg) for msg, nodes in msgs.items()]
