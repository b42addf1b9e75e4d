"""The previous run, for `--node @failed` and `skeleton runs retry`: its operation, recorded
arguments and every node's outcome.

With a registry the run journal holds it (the newest finished run of this user@host, of
any operation). Without one, the app layer keeps it in a local state file, rewritten after
every cluster command: `$XDG_STATE_HOME/skeleton/last-run.json` (else
`~/.local/state/skeleton/last-run.json`), mode 0600, replaced atomically (temp file +
rename), so a reader never sees half a file and two commands finishing together leave one
whole run. It is read only when it is a regular file (no symlink) owned by this user, in a
directory no other user may write: `runs retry last` runs the command it records.
Arguments that look like secrets are never recorded, here or in the journal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skeleton_app.errors import UsageError
from skeleton_app.state_files import read_private, state_dir, write_private

if TYPE_CHECKING:
    from skeleton_app.registry.records import RunRecord
    from skeleton_app.results import ClusterResult

STATE_FILE = "last-run.json"
_FORMAT = 1
# A sudo password, a token: never in a journal row nor in the state file, whatever an
# operation passes as its arguments.
_SECRET_KEY_RE = re.compile(r"pass(word|phrase)?|secret|token|credential", re.IGNORECASE)


def public_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """`arguments` without the keys that name a secret (what is journaled and kept)."""
    return {k: v for k, v in arguments.items() if not _SECRET_KEY_RE.search(k)}


@dataclass(frozen=True, slots=True)
class NodeOutcome:
    """One node's outcome in a past run: it ran (exit code) or broke (error kind)."""

    exit_code: int | None
    error_kind: str | None

    @property
    def ok(self) -> bool:
        return self.error_kind is None and self.exit_code == 0


@dataclass(frozen=True, slots=True)
class PastRun:
    """A recorded run. `run_id` is the journal's id; None when it comes from the state file."""

    operation: str
    arguments: Mapping[str, Any]
    started_at: datetime
    outcomes: Mapping[str, NodeOutcome]
    run_id: int | None = None

    @property
    def failed(self) -> tuple[str, ...]:
        """The nodes that failed or were unreachable, sorted (what `@failed` names)."""
        return tuple(sorted(n for n, o in self.outcomes.items() if not o.ok))

    @property
    def name(self) -> str:
        return "the last run" if self.run_id is None else f"run {self.run_id}"

    def describe(self) -> str:
        """`exec at 12:03, 2 ok, 1 failed, 1 unreachable`."""
        ok = sum(o.ok for o in self.outcomes.values())
        broke = sum(o.error_kind is not None for o in self.outcomes.values())
        failed = len(self.outcomes) - ok - broke
        counts = [f"{ok} ok"] + [f"{n} {what}" for n, what in ((failed, "failed"),
                                                                (broke, "unreachable")) if n]
        when = self.started_at.astimezone().strftime("%H:%M")
        return f"{self.operation} at {when}, {', '.join(counts)}"

    @classmethod
    def from_result(cls, operation: str, arguments: Mapping[str, Any],
                    result: ClusterResult[Any], *, started_at: datetime) -> PastRun:
        return cls(operation, public_arguments(arguments), started_at,
                   {r.node: NodeOutcome(r.exit_code,
                                        r.error_kind.value if r.error_kind else None)
                    for r in result.values()})

    @classmethod
    def from_record(cls, record: RunRecord) -> PastRun:
        arguments = record.arguments if isinstance(record.arguments, Mapping) else {}
        return cls(record.operation, dict(arguments), record.started_at,
                   {n.node_id: NodeOutcome(n.exit_code, n.error_kind) for n in record.nodes},
                   run_id=record.id)

    def to_json(self) -> str:
        return json.dumps({
            "format": _FORMAT, "operation": self.operation,
            "arguments": dict(self.arguments), "started_at": self.started_at.isoformat(),
            "nodes": {node: {"exit_code": o.exit_code, "error_kind": o.error_kind}
                      for node, o in sorted(self.outcomes.items())},
        }, default=str, indent=1)

    @classmethod
    def from_json(cls, text: str) -> PastRun:
        """ValueError when `text` is not a state file this version wrote."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError("not a skeleton last-run file (or another version's)")
        nodes = data["nodes"]
        arguments = data["arguments"]
        if not isinstance(nodes, dict) or not isinstance(arguments, dict):
            raise ValueError("nodes and arguments must be objects")
        outcomes = {}
        for node, o in nodes.items():
            exit_code, kind = o["exit_code"], o["error_kind"]
            if not (exit_code is None or isinstance(exit_code, int)) or not (
                    kind is None or isinstance(kind, str)):
                raise ValueError(f"node {node!r}: bad outcome")
            outcomes[str(node)] = NodeOutcome(exit_code, kind)
        return cls(str(data["operation"]), arguments,
                   datetime.fromisoformat(str(data["started_at"])), outcomes)


def write_state(run: PastRun, directory: Path | None = None) -> Path:
    """Replace the state file with `run`, atomically, mode 0600. OSError when it cannot."""
    return write_private((directory or state_dir()) / STATE_FILE, run.to_json())


def read_state(directory: Path | None = None) -> PastRun | None:
    """The run in the state file; None when there is none. UsageError when it is unreadable
    or another user could have written it (`runs retry last` runs the command recorded
    here); the message names the file: delete it to start afresh."""
    path = (directory or state_dir()) / STATE_FILE
    text = read_private(path, "the last run")
    if text is None:
        return None
    try:
        return PastRun.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a readable last-run file ({exc}); delete it") from None


def now() -> datetime:
    return datetime.now(UTC)
