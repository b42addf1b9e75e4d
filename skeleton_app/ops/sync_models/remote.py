"""The node conversation: run one models.sh step on a node and read its answer.

Each step uploads its inputs as a tar on stdin (the script itself, env.sh and hops.sh with a
node's first step), runs `sh RUN/models.sh ACTION STEP ARGS...` and collects the NUL-separated
answer byte for byte (NodeResult.stdout is text and may be truncated). A node broken
mid-step raises NodeError; a step that ran and failed raises `StepFailed`.
"""

from __future__ import annotations

import io
import shlex
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from skeleton_app import payloads
from skeleton_app.cluster import Cluster
from skeleton_app.errors import NodeError, NodeErrorKind, SkeletonError
from skeleton_app.nodes import Node
from skeleton_app.ops.sync_models.answer import Facts, parse_answer
from skeleton_app.ops.sync_models.leases import Leases
from skeleton_app.ops.sync_models.paths import RUNS_DIR, SCRIPT
from skeleton_app.results import NodeResult
from skeleton_app.ssh.runner import RunOptions

# Step failures after which the connection (and with it the node's lease) may be gone.
_BROKEN = frozenset({NodeErrorKind.LOST, NodeErrorKind.UNREACHABLE, NodeErrorKind.REFUSED,
                     NodeErrorKind.PROTOCOL, NodeErrorKind.ERROR, NodeErrorKind.TIMEOUT})


class StepFailed(SkeletonError):
    """models.sh ran and exited non-zero. `facts`: what it printed before (reports of the
    nodes after a chain's broken hop, for one)."""

    def __init__(self, code: int, message: str, facts: Facts | None = None):
        self.code = code
        self.message = message
        self.facts = facts or Facts()
        super().__init__(message)


class Remote:
    """Runs models.sh steps on the nodes of one run (RUN = RUNS_DIR/RUNID on each)."""

    def __init__(self, cluster: Cluster, runid: str, paths: Mapping[str, str],
                 hops: Callable[[Node], bytes]):
        self.cluster = cluster
        self.run_dir = f"{RUNS_DIR}/{runid}"
        self.paths = paths
        self.hops = hops
        self._step = 0
        self._lock = threading.Lock()
        self.initialized: set[str] = set()
        self.leases = Leases(cluster, self.run_dir)
        self._lapsed: set[str] = set()  # initialized, but the connection broke since

    def next_id(self, prefix: str) -> str:
        with self._lock:
            self._step += 1
            return f"{prefix}{self._step}"

    def env(self, node: Node) -> bytes:
        return f"M={shlex.quote(self.paths[node.id])}\n".encode()

    def call(self, node: Node, action: str, args: Sequence[str] = (), *,
             files: Mapping[str, bytes] | None = None, timeout: float | None = None,
             job: str | None = None, job_files: Mapping[str, bytes] | None = None,
             cancellable: bool = True) -> Facts:
        """Run one action; NodeError when the node broke, StepFailed when the script failed.
        `cancellable=False` for clean-up steps that must run after a Ctrl-C too.
        `files` land in this step's directory, `job_files` in RUN/JOB (where the next node
        of a chain and later steps find them). The first call to a node (or the first after
        it cleaned up) also uploads the script."""
        with self._lock:
            init = node.id not in self.initialized or node.id in self._lapsed
        step = self.next_id("s")
        upload: dict[str, bytes] = {}
        if init:
            self.leases.take(node, cancellable=cancellable)
            upload[SCRIPT] = payloads.data(SCRIPT)
            upload["env.sh"] = self.env(node)
            upload["hops.sh"] = self.hops(node)
        for name, content in (files or {}).items():
            upload[f"{step}/{name}"] = content
        for name, content in (job_files or {}).items():
            upload[f"{job}/{name}"] = content
        run = shlex.quote(self.run_dir)
        parts = []
        if init:
            # Runs of controllers that died leave their directory: sweep those older than a day.
            parts.append(
                f"mkdir -p {shlex.quote(RUNS_DIR)} && chmod 700 {shlex.quote(RUNS_DIR)} &&"
                f" {{ find {shlex.quote(RUNS_DIR)} -mindepth 1 -maxdepth 1 -mtime +1"
                f" -exec rm -rf {{}} + 2>/dev/null; true; }} && mkdir -p {run}")
        parts.append(f"tar -x -f - -C {run}")
        argv = ["sh", f"{self.run_dir}/{SCRIPT}", action, f"{self.run_dir}/{step}", *args]
        command = " && ".join(parts) + " && " + shlex.join(argv)
        out = bytearray()

        def sink(_node: str, stream: str, data: bytes) -> None:
            if stream == "stdout":
                out.extend(data)

        result = self.cluster.connector.run(
            node, command, RunOptions(timeout=timeout, stdin=_tar(upload), sink=sink,
                                      cancellable=cancellable))
        if init and result.error_kind is None:
            with self._lock:
                self.initialized.add(node.id)
                self._lapsed.discard(node.id)
        self._note_broken(node, result)
        if action == "finish" and result.error_kind is None and result.exit_code == 0:
            self.finished([node])
        if result.error_kind is not None:
            raise NodeError(result.error_kind, result.error or "failed", node=node.id)
        if result.exit_code != 0:
            lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
            message = lines[-1] if lines else f"models.sh {action} exited {result.exit_code}"
            try:
                facts = parse_answer(bytes(out))
            except NodeError:
                facts = None
            raise StepFailed(result.exit_code or 1,
                             message.removeprefix("skeleton-models: "), facts)
        return parse_answer(bytes(out))

    def finished(self, nodes: Iterable[Node]) -> None:
        """`nodes` removed their run dir: their next step uploads the script again."""
        with self._lock:
            for node in nodes:
                self.initialized.discard(node.id)

    def _note_broken(self, node: Node, result: NodeResult[Any]) -> None:
        if result.error_kind in _BROKEN:
            # The lease may have ended with the connection, and the node's run dir with it:
            # the next step uploads the script again, under a new lease.
            self.leases.lapse(node)
            with self._lock:
                self._lapsed.add(node.id)

    def shell(self, node: Node, command: str, timeout: float = 15.0) -> NodeResult[Any]:
        result = self.cluster.connector.run(node, command, RunOptions(timeout=timeout))
        self._note_broken(node, result)
        return result

    def job_dir(self, job: str) -> str:
        return f"{self.run_dir}/{job}"

    def remote_command(self, action: str, job: str) -> str:
        """The command line that runs `action` of `job` (used for node-to-node hops)."""
        path = f"{self.run_dir}/{job}"
        return shlex.join(["sh", f"{self.run_dir}/{SCRIPT}", action, path, path])


def _tar(files: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644 if name.endswith(SCRIPT) else 0o600
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()
