"""Publishing: a target whose copy is checked whole is swapped into place and becomes a holder.

Each receiver checks and publishes its own copy when its stream ends (models.sh seal) and
reports it through the chain; `finalize` handles the members that did not report success:
it probes their staged copy, deletes anything not in the manifest and publishes what is
right. After a Ctrl-C, `settle_interrupted` asks each unfinished target whether it published
just before the stop, so the result says exactly what was published where.
"""

from __future__ import annotations

import contextlib
import shlex

from skeleton_app import cancel
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.ops.sync_models.answer import Facts
from skeleton_app.ops.sync_models.chain import Job, Target
from skeleton_app.ops.sync_models.context import HASH_RATE, RunContext
from skeleton_app.ops.sync_models.manifest import NO_CLAIM, Manifest
from skeleton_app.ops.sync_models.paths import node_path, split_name
from skeleton_app.ops.sync_models.plan import check_staged, nul_list
from skeleton_app.ops.sync_models.remote import StepFailed


def published(ctx: RunContext, t: Target, elapsed: float) -> None:
    """`t` published its copy: it is synced, and serves later jobs."""
    plan = t.plan
    assert plan is not None
    t.status = "synced"
    t.moved += plan.need_bytes
    t.seconds += elapsed
    t.message = ""
    ctx.report(t, "done", plan.need_bytes, plan.need_bytes,
               plan.need_bytes / max(elapsed, 1e-6))
    ctx.holders.add(t.node)


def finalize(ctx: RunContext, t: Target, job: Job, elapsed: float, note: str) -> None:
    """Check the staged copy of a member that did not publish itself, and publish it if it
    is right; else say what is wrong (after `note`, what the transfer said)."""
    plan = t.plan
    if plan is None or t.status != "pending":
        return
    names = plan.names
    # What was transferred is hashed, --verify or not (see plan.seal_files).
    files = {"hash.lst": nul_list(node_path(*split_name(p), staged=True) for p in job.files)}
    ctx.report(t, "verify", job.total, job.total)
    facts = ctx.call_or_fail(t, "probe", names, files=files,
                             timeout=ctx.deadline(job.total, HASH_RATE))
    if facts is None:
        return
    t.facts = facts
    check = check_staged(facts, ctx.manifests, names, job.files, ctx.paths[t.node.id])
    if check.problems:
        problems = check.problems
        shown = ", ".join(problems[:3]) + (f" and {len(problems) - 3} more"
                                           if len(problems) > 3 else "")
        t.message = (note + "; " if note else "") + f"incomplete after transfer: {shown}"
        if check.corrupt:
            # Full size, wrong content: a later round would take them for complete.
            ctx.remote.shell(t.node, "rm -f -- " + shlex.join(check.corrupt))
        if job.mode in ("chain", "relay"):
            # A receiver behind a dead node may still wait for the rest of its stream:
            # stop it before the next round writes into the same staging directory.
            ctx.abort(t.node, job.id)
        return
    pub = {"pub.lst": nul_list(names), "rmx.lst": nul_list(check.strays)}
    for name in names:
        pub[f"fclaims/{name}.json"] = ctx.manifests[name].to_json()
    if ctx.call_or_fail(t, "publish", files=pub) is None:
        return
    published(ctx, t, elapsed)


def settle_interrupted(ctx: RunContext) -> None:
    """After a Ctrl-C (and every transfer of the run stopped): ask each target that has not
    reported its copy published whether it has our manifests' claims (published just before
    the stop). Nothing else is ever published: a copy is swapped into place only after it
    was checked whole."""
    names = list(ctx.manifests)

    def settle(t: Target) -> None:
        if t.status not in ("pending", "failed") or (
                t.status == "failed" and t.error_kind != NodeErrorKind.INTERRUPTED):
            return
        facts: Facts | None = None
        if names and t.plan is not None:
            # It may have published and removed its run dir before the stop: upload
            # the script again (the run's clean-up removes what this probe makes).
            ctx.finished([t.node])
            with contextlib.suppress(NodeError, StepFailed):
                facts = ctx.remote.call(t.node, "probe", names, timeout=30,
                                        cancellable=False)
        if facts is not None and all(
                (Manifest.from_json(n, facts.final_claims.get(n))[0] or NO_CLAIM).digest
                == ctx.manifests[n].digest for n in names):
            t.status, t.error_kind, t.message = "synced", None, ""
            t.moved += t.plan.need_bytes if t.plan else 0
            return
        t.fail(f"{cancel.INTERRUPTED}: nothing published on this node in this run"
               " (a partial copy stays in staging, for the next run to resume)",
               NodeErrorKind.INTERRUPTED)
        ctx.report(t, "failed", message=t.message)

    ctx.parallel(settle, ctx.targets)
