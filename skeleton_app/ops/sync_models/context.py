"""What every phase of one sync run shares: the nodes and their paths, the node conversation,
the holders, the failed pairs, the manifests once read, the warnings, and the options.

Phases (`source`, `transfer`, `relay`, `publish`, `sync`) are functions and small classes
over a `RunContext`; none of them holds state of its own beyond one job.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from skeleton_app import cancel
from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.errors import NodeError
from skeleton_app.nodes import Node
from skeleton_app.ops.sync_models.answer import Facts
from skeleton_app.ops.sync_models.chain import MAX_ROUNDS, HopLog, Target
from skeleton_app.ops.sync_models.holders import Holders
from skeleton_app.ops.sync_models.manifest import Manifest
from skeleton_app.ops.sync_models.paths import RUNS_DIR, check_model_name, models_dir
from skeleton_app.ops.sync_models.peers import Peers
from skeleton_app.ops.sync_models.progress import ProgressFn, Reporter
from skeleton_app.ops.sync_models.remote import Remote, StepFailed

# Deadlines of transfers assume at least this rate, so that a slow link is not killed while a
# dead one still is (liveness is checked separately, every ssh.keepalive seconds).
MIN_RATE = 256 * 1024
HASH_RATE = 20 * 1024 * 1024

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Options:
    """What the caller asked for."""

    model: str | None  # None: every model of the source's models directory
    verify: bool
    relay: bool
    timeout: float | None


@dataclass
class RunContext:
    cluster: Cluster
    source: Node
    targets: list[Target]
    paths: dict[str, str]  # node id -> its models directory
    peers: Peers
    remote: Remote
    holders: Holders
    options: Options
    report: Reporter
    warnings: list[str] = field(default_factory=list)
    hops: HopLog = field(init=False)
    manifests: dict[str, Manifest] = field(default_factory=dict)  # once the source is read
    offender: str | None = None  # a holder that broke its manifest: the run stops
    round_no: int = 1

    def __post_init__(self) -> None:
        self.hops = HopLog(self.warnings)

    @classmethod
    def create(cls, cluster: Cluster, source: Node, targets: Sequence[Node], *,
               models_path: str | None, options: Options, on_progress: ProgressFn | None,
               streams_per_sender: int) -> RunContext:
        if options.model is not None:
            check_model_name(options.model)
        nodes = (source, *targets)
        paths = {n.id: models_dir(cluster, n, models_path) for n in nodes}
        runid = secrets.token_hex(6)
        peers = Peers(nodes, cluster.settings.ssh, f"{RUNS_DIR}/{runid}", relay=options.relay)
        remote = Remote(cluster, runid, paths, peers.hops_sh)
        return cls(cluster=cluster, source=source, targets=[Target(n) for n in targets],
                   paths=paths, peers=peers, remote=remote,
                   holders=Holders(streams_per_sender), options=options,
                   report=Reporter(on_progress))

    @property
    def settings(self) -> Settings:
        return self.cluster.settings

    @property
    def last_round(self) -> bool:
        return self.round_no >= MAX_ROUNDS

    def index(self, node: Node) -> int:
        return self.peers.index[node.id]

    def parallel(self, fn: Callable[[_T], object], items: Sequence[_T]) -> None:
        if not items:
            return
        fanout = max(1, self.settings.ssh.fanout)
        # cancel.executor: a KeyboardInterrupt here stops the nodes' work before it goes up.
        with cancel.executor(min(fanout, len(items)), "models") as pool:
            list(pool.map(fn, items))

    def model_bytes(self) -> int:
        return sum(m.size for m in self.manifests.values())

    def deadline(self, nbytes: int, rate: int = MIN_RATE) -> float:
        if self.options.timeout is not None:
            return self.options.timeout
        return max(self.settings.ssh.op_timeout, 120.0 + nbytes / rate)

    def job_sh(self, job: str, me: Node, nxt: Node | None, extra: str = "") -> bytes:
        """JOB/job.sh for `me`, forwarding to `nxt` (the recv step of the same job)."""
        return self.peers.job_sh(me, nxt, self.remote.remote_command("recv", job), extra)

    def probe(self, targets: Sequence[Target], args: Sequence[str],
              timeout: float | None, hint: bool = False) -> None:
        """models.sh probe on every target (free disk, what it holds; with verify, hashes);
        a target that fails it fails. `hint`: also start each one's connection to the next
        peer."""

        def probe(t: Target) -> None:
            first = self.peers.connect_hint(t.node) if hint else []
            try:
                t.facts = self.remote.call(t.node, "probe", [*first, *args], timeout=timeout)
            except NodeError as exc:
                t.fail(exc.message, exc.kind)
            except StepFailed as exc:
                t.fail(exc.message)

        self.parallel(probe, targets)

    def call_or_fail(self, t: Target, action: str, args: Sequence[str] = (), *,
                     files: dict[str, bytes] | None = None,
                     timeout: float | None = None) -> Facts | None:
        """`remote.call` on target `t`; if the node or the step fails, `t` fails (and says so)
        and the answer is None."""
        try:
            return self.remote.call(t.node, action, args, files=files, timeout=timeout)
        except NodeError as exc:
            t.fail(exc.message, exc.kind)
        except StepFailed as exc:
            t.fail(exc.message)
        self.report(t, "failed", message=t.message)
        return None

    def abort(self, node: Node, job: str) -> None:
        """Stop `node`'s transfer processes of `job` ("*": all) of this run."""
        with contextlib.suppress(NodeError, StepFailed):
            self.remote.call(node, "abort", [job], timeout=30, cancellable=False)

    def initialized(self) -> list[Node]:
        """The run's nodes that hold its run dir (and may run its processes)."""
        return [n for n in self.peers.nodes if n.id in self.remote.initialized]

    def finished(self, nodes: Iterable[Node]) -> None:
        self.remote.finished(nodes)
