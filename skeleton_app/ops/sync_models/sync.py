"""The run, phase by phase: read the source (and probe the targets), then up to MAX_ROUNDS
rounds of prepare + transfer (re-probing what is still pending), then the clean-up on every
node the run touched, and one `NodeResult[SyncOutcome]` per target.

Whatever happens (a failure, a Ctrl-C), the clean-up runs: every transfer of the run is
stopped, each node's run dir removed, and the leases closed last.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

from skeleton_app import cancel
from skeleton_app.cluster import Cluster
from skeleton_app.errors import NodeError, UsageError
from skeleton_app.nodes import Node
from skeleton_app.ops.sync_models.chain import MAX_ROUNDS, Target
from skeleton_app.ops.sync_models.context import HASH_RATE, Options, RunContext
from skeleton_app.ops.sync_models.outcome import Status, SyncOutcome
from skeleton_app.ops.sync_models.prepare import prepare_round
from skeleton_app.ops.sync_models.progress import ProgressFn
from skeleton_app.ops.sync_models.publish import settle_interrupted
from skeleton_app.ops.sync_models.remote import StepFailed
from skeleton_app.ops.sync_models.source import SourceReader
from skeleton_app.ops.sync_models.transfer import JobRunner
from skeleton_app.results import ClusterResult, NodeResult, failure

DEFAULT_STREAMS_PER_SENDER = 4


def sync_models(
    cluster: Cluster,
    *,
    source_node: Node | str,
    targets: Sequence[Node] | None = None,
    models_path: str | None = None,
    model: str | None = None,
    verify: bool = False,
    relay: bool = False,
    on_progress: ProgressFn | None = None,
    streams_per_sender: int = DEFAULT_STREAMS_PER_SENDER,
    timeout: float | None = None,
) -> ClusterResult[SyncOutcome]:
    """Spread `model` (default: every model) from `source_node` to `targets` (default: every
    other node). One NodeResult per target; its `outcome.status` is up-to-date, synced,
    repaired, refused or failed. Raises NodeError when the source cannot be read (nothing
    transferred) and UsageError for bad paths or names."""
    source = source_node if isinstance(source_node, Node) else cluster.node(source_node)
    chosen = list(cluster.nodes if targets is None else targets)
    seen: set[str] = set()
    target_nodes = []
    for n in chosen:
        if n.id != source.id and n.id not in seen:
            seen.add(n.id)
            target_nodes.append(n)
    if not target_nodes:
        raise UsageError(f"no target nodes: the selection holds only the source {source.id}")
    if streams_per_sender < 1:
        raise UsageError(f"streams per sender must be at least 1, got {streams_per_sender}")
    ctx = RunContext.create(cluster, source, target_nodes, models_path=models_path,
                            options=Options(model=model, verify=verify, relay=relay,
                                            timeout=timeout),
                            on_progress=on_progress, streams_per_sender=streams_per_sender)
    return _Run(ctx).run()


class _Run:
    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.source = SourceReader(ctx, self.preflight)

    def run(self) -> ClusterResult[SyncOutcome]:
        ctx = self.ctx
        started = time.monotonic()
        try:
            ctx.manifests = self.source.read()
            ctx.holders.add(ctx.source)
            self.rounds()
            if cancel.cancelled():
                self.abort_all()
                settle_interrupted(ctx)
            for t in (t for t in ctx.targets if t.status == "pending"):
                t.fail(t.message or "did not complete", t.error_kind)
                ctx.report(t, "failed", message=t.message)
        except BaseException:
            self.abort_all()
            raise
        finally:
            self.source.shutdown()
            self.finish()
            ctx.remote.leases.release()  # after finish: the nodes find nothing left to do
            self.source.warm_wait()
        return ClusterResult([self.result(t) for t in ctx.targets], operation="sync-models",
                             duration=time.monotonic() - started, warnings=ctx.warnings)

    # -- plan and transfer

    def preflight(self, names: list[str], total: int) -> None:
        """Probe every target (free disk, what it holds; with verify, hashes): nothing moves."""
        verify = self.ctx.options.verify
        args = (["--hash-all"] if verify else []) + names
        deadline = self.ctx.deadline(total, HASH_RATE) if verify else None
        self.ctx.probe(self.ctx.targets, args, deadline, hint=True)

    def rounds(self) -> None:
        """Prepare and run jobs until every target is done, at most MAX_ROUNDS times; a
        later round re-probes what is still pending and routes around failed pairs."""
        ctx = self.ctx
        pending = [t for t in ctx.targets if t.status == "pending"]
        for round_no in range(1, MAX_ROUNDS + 1):
            if not pending or cancel.cancelled():
                break
            ctx.round_no = round_no
            if round_no > 1:
                verify = ctx.options.verify
                args = (["--hash-all"] if verify else []) + list(ctx.manifests)
                deadline = ctx.deadline(ctx.model_bytes(), HASH_RATE) if verify else None
                ctx.probe(pending, args, deadline)
            JobRunner(ctx).run(prepare_round(ctx, pending))
            pending = [t for t in ctx.targets if t.status == "pending"]
            if ctx.offender is not None:
                for t in pending:
                    t.fail(f"not synced: {ctx.offender} sent what its manifest does not"
                           " list; the run was stopped")
                    ctx.report(t, "failed", message=t.message)
                pending = []

    # -- clean-up

    def abort_all(self) -> None:
        """Stop every transfer process of this run on the nodes."""
        self.ctx.parallel(lambda n: self.ctx.abort(n, "*"), self.ctx.initialized())

    def finish(self) -> None:
        """Close each node's control masters and remove its run dir; on the source, write
        the claims whose hash cache changed."""
        ctx = self.ctx

        def finish(node: Node) -> None:
            files: dict[str, bytes] = {}
            args: list[str] = []
            if node.id == ctx.source.id and self.source.claims:
                files = {f"fclaims/{name}.json": claim
                         for name, claim in self.source.claims.items()}
                args = ["--claims"]
            with contextlib.suppress(NodeError, StepFailed):
                ctx.remote.call(node, "finish", args, files=files, timeout=30,
                                cancellable=False)

        ctx.parallel(finish, ctx.initialized())

    # -- the result

    def result(self, t: Target) -> NodeResult[SyncOutcome]:
        outcome = SyncOutcome(
            status=_status(t),
            source=self.ctx.source.id, models=tuple(t.models), moved=t.moved,
            seconds=round(t.seconds, 3),
            rate=round(t.moved / t.seconds, 1) if t.seconds > 0 else 0.0,
            via=tuple(t.via), repaired=tuple(t.repaired), rerouted=tuple(t.rerouted),
            path=self.ctx.paths[t.node.id])
        if t.status in ("synced", "up-to-date"):
            return NodeResult(node=t.node.id, exit_code=0, duration=t.seconds,
                              outcome=outcome, stdout=outcome.summary() + "\n")
        if t.error_kind is not None:
            r = failure(t.node.id, t.error_kind, t.message)
            return NodeResult(node=r.node, error_kind=r.error_kind, error=r.error,
                              duration=t.seconds, outcome=outcome)
        return NodeResult(node=t.node.id, exit_code=1, stderr=t.message + "\n",
                          duration=t.seconds, outcome=outcome)


def _status(t: Target) -> Status:
    if t.status == "synced":
        return "repaired" if t.repaired else "synced"
    if t.status == "pending":
        return "failed"  # never at the end of a run: every pending target failed
    return t.status
