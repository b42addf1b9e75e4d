"""One round's planning on the nodes: plan every pending target from its facts, refuse those
short of disk, group the rest into jobs, and get their staging directories ready.

Preparing a chain member also opens its connection to the next member (models.sh prepare,
exit 4 when that fails): the failed pair is recorded, and the chain is cut there when it runs.
"""

from __future__ import annotations

from skeleton_app.errors import NodeError
from skeleton_app.nodes import Node
from skeleton_app.ops.sync_models.chain import Job, Target, plan_jobs
from skeleton_app.ops.sync_models.context import RunContext
from skeleton_app.ops.sync_models.outcome import size_text
from skeleton_app.ops.sync_models.plan import plan_target, prepare_files, seal_files
from skeleton_app.ops.sync_models.remote import StepFailed


def prepare_round(ctx: RunContext, pending: list[Target]) -> list[Job]:
    """Plan every pending target; refuse those short of disk; prepare the rest. The jobs
    that still have a pending member."""
    ready = [t for t in pending if _plan(ctx, t)]
    jobs = plan_jobs(ready, ctx.hops.snapshot(), holders=ctx.holders.ids(),
                     relay=ctx.options.relay, last_round=ctx.last_round,
                     order=ctx.peers.index, next_id=lambda: ctx.remote.next_id("j"))
    nxt: dict[str, Node | None] = {}
    for job in jobs:
        for i, t in enumerate(job.members):
            t.job = job.id
            t.hop_error = ""
            if job.mode == "chain":
                nxt[t.node.id] = (job.members[i + 1].node if i + 1 < len(job.members)
                                  else None)

    def run(t: Target) -> None:
        plan = t.plan
        assert plan is not None
        receiver = nxt.get(t.node.id)
        job_files = {"job.sh": ctx.job_sh(t.job, t.node, receiver),
                     **seal_files(plan, ctx.manifests)}
        try:
            facts = ctx.remote.call(t.node, "prepare", [ctx.remote.job_dir(t.job)],
                                    files=prepare_files(plan, ctx.manifests), job=t.job,
                                    job_files=job_files,
                                    timeout=ctx.settings.ssh.op_timeout)
            t.staged_base = facts.staged
            ctx.report(t, "preflight", 0, plan.need_bytes)
        except NodeError as exc:
            t.fail(exc.message, exc.kind)
        except StepFailed as exc:
            if exc.code == 4 and receiver is not None:
                # Ready, but its chain breaks after it.
                t.hop_error = (ctx.hops.record(t.node.id, receiver.id, exc.message)
                               or exc.message)
            else:
                t.fail(exc.message)

    ctx.parallel(run, ready)
    return [job for job in jobs if any(t.status == "pending" for t in job.members)]


def _plan(ctx: RunContext, t: Target) -> bool:
    """Plan `t`: True when it has something to receive and room for it."""
    if t.status != "pending" or t.facts is None:
        return False
    plan = plan_target(t.facts, ctx.manifests, verify=ctx.options.verify)
    t.plan = plan
    t.models = plan.names or plan.up_to_date
    for path in plan.repaired:
        if path not in t.repaired:
            t.repaired.append(path)
    if not plan.names:
        if not t.via:
            t.status = "up-to-date"
            ctx.report(t, "up-to-date", message="already up to date")
        else:
            t.status = "synced"
        return False
    if plan.need_bytes > t.facts.avail:
        t.status = "refused"
        t.message = (f"not enough free disk space in {t.facts.avail_path}:"
                     f" {size_text(plan.need_bytes)} needed, {size_text(t.facts.avail)}"
                     " available; nothing was transferred")
        ctx.report(t, "refused", message=t.message)
        return False
    return True
