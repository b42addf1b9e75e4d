"""Running one round's jobs: each takes the least loaded holder that can serve it and moves
its files by a pipelined chain, a pull (rsync) or a relay, then reads what its members
sealed and publishes or refuses them.

A chain: the holder streams a tar of the files to the first member, which writes it to its
staging directory while `tee` forwards the same bytes to the next, and so on; every member
seals its own copy when its stream ends and the reports come back through the chain. A
pull: the member rsyncs from the holder (`--append-verify` resumes a half-written file).
A holder that sends what its manifest does not list serves nobody else, and the run stops.
"""

from __future__ import annotations

import shlex
import threading
import time

from skeleton_app import cancel
from skeleton_app.errors import NodeError
from skeleton_app.nodes import Node
from skeleton_app.ops.sync_models.chain import Job, Target
from skeleton_app.ops.sync_models.context import RunContext
from skeleton_app.ops.sync_models.paths import STAGE
from skeleton_app.ops.sync_models.plan import nul_list
from skeleton_app.ops.sync_models.progress import Poller
from skeleton_app.ops.sync_models.publish import finalize, published
from skeleton_app.ops.sync_models.relay import relay
from skeleton_app.ops.sync_models.remote import StepFailed
from skeleton_app.transfers import build_rsync_argv, remote_spec

_HOW = {"pull": "rsync from", "relay": "relayed from", "chain": "chain from"}


class JobRunner:
    """Runs the jobs of one round, all at once; a job waits for a free holder."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self._active = 0
        self._lock = threading.Lock()

    def run(self, jobs: list[Job]) -> None:
        with self._lock:
            self._active = len(jobs)

        def run(job: Job) -> None:
            try:
                self._run_job(job)
            finally:
                with self._lock:
                    self._active -= 1

        if jobs:
            with cancel.executor(len(jobs), "job") as pool:
                list(pool.map(run, jobs))

    def _busy(self) -> bool:
        """Other jobs still run: they may free a holder's slot or add a holder."""
        with self._lock:
            return self._active > 0

    def _run_job(self, job: Job) -> None:
        ctx = self.ctx
        if cancel.cancelled():
            return  # Ctrl-C: no new transfer starts (its members stay pending)
        head = next((t for t in job.members if t.status == "pending"), None)

        def usable(node: Node) -> bool:
            # A pair whose connection failed is not tried again (the other direction may be).
            if job.mode == "relay" or head is None:
                return True
            if job.mode == "pull":
                return not ctx.hops.failed(head.node.id, node.id)
            return not ctx.hops.failed(node.id, head.node.id)

        holder = ctx.holders.acquire(self._busy, usable)
        if holder is None:
            for t in job.members:
                t.message = t.message or "no node holding the model is reachable any more"
            return
        started = time.monotonic()
        note = ""
        try:
            if job.mode == "pull":
                note = self._pull(job, holder)
            elif job.mode == "relay":
                note = relay(ctx, job, holder)
            else:
                note = self._chain(job, holder)
        except (NodeError, StepFailed) as exc:
            note = str(exc)
            if isinstance(exc, StepFailed) and exc.code == 4 and head is not None:
                # The holder could not reach the first receiver (chain), or a puller the
                # holder: that pair is out, the job is re-planned in the next round.
                opener, peer = ((head.node, holder) if job.mode == "pull"
                                else (holder, head.node))
                cause = ctx.hops.record(opener.id, peer.id, exc.message)
                if cause:
                    note = cause
                    for t in job.members:
                        t.reroute(cause)
            # Did the sender die? Then it serves nobody else.
            self._check_holder(holder)
        finally:
            ctx.holders.release(holder)
        self._settle(job, holder, time.monotonic() - started, note)

    def _settle(self, job: Job, holder: Node, elapsed: float, note: str) -> None:
        """What the job's members sealed: published, refused (the holder sent what the
        manifest does not list), or to be checked and published by the controller."""
        ctx = self.ctx
        ctx.finished(t.node for t in job.members if ctx.index(t.node) in job.finished)
        states = {ctx.index(t.node): job.reports.get(ctx.index(t.node), ("", ""))
                  for t in job.members}
        hostile = next((why for state, why in states.values() if state == "hostile"), None)
        unsealed = []
        for t in job.members:
            t.via.append(f"{_HOW[job.mode]} {holder.id}"
                         + (f": no peer could reach it ({t.relay_why})"
                            if job.mode == "relay" and t.relay_why else ""))
            state, why = states[ctx.index(t.node)]
            if state == "published":
                published(ctx, t, elapsed)
            elif hostile is not None:
                self._refuse_sender(t, holder, why if state == "hostile" else hostile)
            else:
                unsealed.append(t)
                note = note or why
        # Members that did not publish themselves: find out why, and publish what is right.
        ctx.parallel(lambda t: finalize(ctx, t, job, elapsed, note), unsealed)

    def _chain(self, job: Job, holder: Node) -> str:
        ctx = self.ctx
        # A member that failed to prepare is out; one that could not connect to its next
        # node ends the chain (the rest wait for the next round, and any holder).
        members = [t for t in job.members if t.status == "pending"]
        cut = next((i for i, t in enumerate(members) if t.hop_error), None)
        if cut is not None:
            for t in members[cut + 1:]:
                t.message = members[cut].hop_error
                t.reroute(members[cut].hop_error)
            members = members[:cut + 1]
            ctx.remote.call(members[-1].node, "upload", job=job.id,
                            job_files={"job.sh": ctx.job_sh(job.id, members[-1].node, None)})
        job.members = members
        if not members:
            return ""
        try:
            with Poller(ctx.report, ctx.remote, ctx.paths, job):
                facts = ctx.remote.call(
                    holder, "send", [ctx.remote.job_dir(job.id)], job=job.id,
                    job_files={"job.sh": ctx.job_sh(job.id, holder, members[0].node),
                               "send.lst": nul_list(job.files)},
                    timeout=ctx.deadline(job.total))
        except StepFailed as exc:
            job.absorb(exc.facts)
            raise
        job.absorb(facts)
        return ""

    def _pull(self, job: Job, holder: Node) -> str:
        ctx = self.ctx
        t = job.members[0]
        ssh = ctx.settings.ssh
        rsh = [*ctx.peers.hop_ssh(holder, master="no"), "--"]
        argv = build_rsync_argv(
            [remote_spec(holder.host, ctx.paths[holder.id] + "/")], f"./{STAGE}/",
            rsh=rsh, compress=False, partial_dir=None, protect_args="-s",
            io_timeout=max(30, int(ssh.keepalive * 10)),
            # Only the listed regular files come: the holder may be a hostile source, and a
            # symlink (even a "safe" one: a chain of them leads anywhere) or a directory
            # entry of its choosing must not replace the real directories prepare made.
            rsync_opts=["--no-links", "--no-implied-dirs", "--append-verify", "--from0"],
        )
        split = argv.index("--")
        job_sh = ctx.job_sh(job.id, t.node, None, extra=(
            f"PEER={ctx.index(holder)}\n"
            f"pull_rsync() {{ {shlex.join(argv[:split])} \"$@\""
            f" {shlex.join(argv[split:])}; }}\n"))
        with Poller(ctx.report, ctx.remote, ctx.paths, job):
            facts = ctx.remote.call(t.node, "pull", [ctx.remote.job_dir(job.id)],
                                    job=job.id, timeout=ctx.deadline(job.total),
                                    job_files={"job.sh": job_sh,
                                               "pull.lst": nul_list(job.files)})
        job.absorb(facts)
        return ""

    def _refuse_sender(self, t: Target, holder: Node, why: str) -> None:
        """`holder` sent `t` (or a member of its job) something its manifest does not list:
        nothing of the job is published, the holder serves nobody else, and the run stops
        after this round, naming it."""
        ctx = self.ctx
        ctx.holders.remove(holder)
        ctx.offender = ctx.offender or holder.id
        self._drop_staged(t)
        t.fail(f"{holder.id} sent what its manifest does not list ({why}): refused as hostile;"
               " nothing was published")
        ctx.report(t, "failed", message=t.message)

    def _drop_staged(self, t: Target) -> None:
        """Stop `t`'s transfers of this run and remove its staged copies (and what a hostile
        stream may have left in them) with their stage claims."""
        ctx = self.ctx
        ctx.abort(t.node, t.job or "*")
        if t.plan is None or not t.plan.names:
            return
        base = f"{ctx.paths[t.node.id]}/{STAGE}"
        paths = [p for name in t.plan.names
                 for p in (f"{base}/{name}", f"{base}/.manifests/{name}.json")]
        ctx.remote.shell(t.node, "rm -rf -- " + shlex.join(paths))

    def _check_holder(self, holder: Node) -> None:
        r = self.ctx.remote.shell(holder, "true",
                                  timeout=self.ctx.settings.ssh.connect_timeout + 5)
        if r.error_kind is not None:
            self.ctx.holders.remove(holder)
