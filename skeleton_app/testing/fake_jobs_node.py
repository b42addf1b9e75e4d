"""The node side of job attempts in memory (ops/jobs/node.py's functions), for unit tests of
the dispatcher: `Dispatcher(cluster, store, node_api=FakeJobNodes())`.

Each started attempt is a record; its command "runs" until the test lets it end: at once
by default, or when `release(job_id)` is called for a job listed in `hold`. How it ends is
`answer(node_id, command, input)` (default: exit 0, the output "done: <input>"). A node in
`frozen` raises NodeError from every call, as a node that stopped answering does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from skeleton_app.engines import Engine
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.ops.jobs.node import AttemptEnd
from skeleton_app.ssh.runner import Runner


@dataclass
class FakeAttempt:
    node_id: str
    job_id: int
    n: int
    command: str
    input_name: str | None
    input_data: bytes | None
    pgid: int
    killed: bool = False
    removed: bool = False
    waits: int = 0
    events: list[str] = field(default_factory=list)


Answer = Callable[[str, str, bytes | None], AttemptEnd]


def default_answer(node_id: str, command: str, data: bytes | None) -> AttemptEnd:
    return AttemptEnd(exit_code=0, output=b"done: " + (data or b""), output_truncated=False,
                      stderr_tail="", seconds=0.01)


class FakeJobNodes:
    """Satisfies ops/jobs/attempt.py's `NodeApi`. Thread-safe."""

    def __init__(self, answer: Answer = default_answer, *, freeze_delay: float = 0.05):
        self.answer = answer
        self.freeze_delay = freeze_delay  # how long a frozen node takes to be noticed
        self.attempts: dict[tuple[int, int], FakeAttempt] = {}
        self.hold: set[int] = set()  # job ids whose command runs until released
        self.frozen: set[str] = set()
        self.preflights: dict[str, str | None] = {}  # node id -> failure line (None: ok)
        self.preflight_calls: list[tuple[str, str]] = []
        self.kills: list[tuple[str, int, int, int | None]] = []  # node, job, n, pgid
        self._released: set[int] = set()
        self._lock = threading.Lock()
        self._pgids = iter(range(1000, 1_000_000))

    def release(self, job_id: int) -> None:
        with self._lock:
            self._released.add(job_id)

    def _check_frozen(self, node: Node, what: str) -> None:
        if node.id in self.frozen:
            time.sleep(self.freeze_delay)
            raise NodeError(NodeErrorKind.LOST, f"{what}: no answer from {node.id}",
                            node=node.id)

    # ------------------------------------------------------------------ the node API

    def job_dir(self, node: Node, job_id: int, n: int) -> str:
        return f"{node.app_dir.rstrip('/')}/jobs/{int(job_id)}/a{int(n)}"

    def render(self, node: Node, job_id: int, n: int, engine: Engine, *,
               input_name: str | None = None, text: str | None = None) -> str:
        # The layout of ops/jobs/node.py: the input in in/, the output written to tmp/.
        where = self.job_dir(node, job_id, n)
        return engine.render(input_path=f"{where}/in/{input_name}" if input_name else None,
                             output_path=f"{where}/tmp/output{engine.output_suffix}",
                             text=text, job_dir=where)

    def failure(self, end: AttemptEnd, engine: Engine,
                max_bytes: int | None = None) -> str | None:
        last = end.stderr_tail.strip().splitlines()
        if end.exit_code != 0:
            return f"exit {end.exit_code}" + (f": {last[-1]}" if last else "")
        if end.output_truncated:
            return f"the output is over the limit of {max_bytes} bytes"
        if engine.output == "file" and (getattr(end, "output_missing", False)
                                        or not end.output):
            return "the command exited 0 but wrote no output file"
        return None

    def start(self, runner: Runner, node: Node, job_id: int, n: int, command: str, *,
              input_name: str | None, input_data: bytes | None, timeout: float) -> int:
        self._check_frozen(node, "start")
        with self._lock:
            pgid = next(self._pgids)
            self.attempts[(job_id, n)] = FakeAttempt(node.id, job_id, n, command, input_name,
                                                     input_data, pgid)
            return pgid

    def start_wait(self, runner: Runner, node: Node, job_id: int, n: int, command: str, *,
                   input_name: str | None, input_data: bytes | None, timeout: float,
                   engine: Engine, slice_s: float, max_bytes: int,
                   remove: bool = False) -> tuple[int, AttemptEnd | None]:
        pgid = self.start(runner, node, job_id, n, command, input_name=input_name,
                          input_data=input_data, timeout=timeout)
        return pgid, self.wait(runner, node, job_id, n, engine=engine, slice_s=slice_s,
                               max_bytes=max_bytes, remove=remove)

    def wait(self, runner: Runner, node: Node, job_id: int, n: int, *, engine: Engine,
             slice_s: float, max_bytes: int, remove: bool = False) -> AttemptEnd | None:
        self._check_frozen(node, "wait")
        with self._lock:
            rec = self.attempts[(job_id, n)]
            rec.waits += 1
            held = job_id in self.hold and job_id not in self._released
        if rec.killed:
            end = AttemptEnd(exit_code=143, output=b"", output_truncated=False,
                             stderr_tail="Terminated", seconds=0.0)
        elif held:
            time.sleep(min(slice_s, 0.02))
            return None
        else:
            end = self.answer(node.id, rec.command, rec.input_data)
        rec.removed = rec.removed or remove
        return end

    def kill(self, runner: Runner, node: Node, job_id: int, n: int, *,
             pgid: int | None) -> None:
        if node.id in self.frozen:
            raise NodeError(NodeErrorKind.UNREACHABLE, f"kill: {node.id} unreachable",
                            node=node.id)
        with self._lock:
            self.kills.append((node.id, job_id, n, pgid))
            rec = self.attempts.get((job_id, n))
            if rec is not None:
                rec.killed = rec.killed or pgid is not None
                rec.removed = True

    def preflight(self, runner: Runner, node: Node, engine: Engine) -> str | None:
        self._check_frozen(node, "preflight")
        with self._lock:
            self.preflight_calls.append((node.id, engine.name))
        return self.preflights.get(node.id)
