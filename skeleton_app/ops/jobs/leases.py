"""A dispatcher's care of its running attempts, once per loop: renew each lease every
lease/3 (a renewal that matches no row, or none possible for a whole lease, means the job
may be someone else's now: the attempt kills its command and writes nothing), lose the
attempts whose node's daemon went stale or whose node.wait has had no answer for longer
than the connection's liveness probe takes, and read cancels from the rows (a NOTIFY is
lost while the listener is disconnected).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from skeleton_app.config import Settings
from skeleton_app.errors import RegistryError
from skeleton_app.ops.jobs.attempt import WAIT_SLICE, AttemptRun
from skeleton_app.registry.job_records import JobStore
from skeleton_app.registry.records import NodeEntry


def silence_limit(settings: Settings) -> float:
    """How long one node.wait may take before its node counts as lost: the slice, then the
    connection's own liveness probe (~2 ssh.keepalive). Needed because a call that starts
    on a node already frozen waits for a new channel up to ssh.connect_timeout, beyond the
    failover budget of 3 ssh.keepalive + 1 s."""
    return WAIT_SLICE + 2 * settings.ssh.keepalive + 0.5


def watch_leases(runs: Sequence[AttemptRun], store: JobStore, settings: Settings,
                 entries: Mapping[str, NodeEntry], *,
                 clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] = lambda line: None) -> None:
    lease = settings.jobs.lease
    stale_after = settings.registry.stale_after
    silent = silence_limit(settings)
    for run in runs:
        if run.finished.is_set() or run.lease_lost.is_set():
            continue
        entry = entries.get(run.node.id)
        if entry is not None and entry.is_stale(stale_after):
            age = "never" if entry.seen_ago is None else f"{entry.seen_ago:.0f} s ago"
            run.node_gone(f"daemon stale (last heartbeat {age})")
        now = clock()
        since = run.call_since
        if since is not None and now - since > silent:
            run.abandon(f"{run.node.id} did not answer for {now - since:.1f} s")
            continue
        if now - run.last_renew < lease / 3:
            continue
        try:
            ok = store.renew(run.job_id, run.token, lease=lease)
        except RegistryError as exc:
            log(f"renew job {run.job_id}: {exc}")
            if now - run.last_renew > lease:
                run.lease_lost.set()  # it has expired by now: someone may take it over
            continue
        if ok:
            run.last_renew = now
        else:
            run.lease_lost.set()


def poll_cancels(runs: Sequence[AttemptRun], store: JobStore) -> None:
    if not runs:
        return
    by_job = {run.job_id: run for run in runs}
    try:
        rows = store.list(states=("running",), limit=1000)
    except RegistryError:
        return  # the claims and the renewals say so already
    for job in rows:
        run = by_job.get(job.id)
        if job.cancel_requested and run is not None:
            run.cancel.set()
