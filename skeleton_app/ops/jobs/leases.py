"""A dispatcher's care of its running attempts, once per loop: renew each lease every
lease/3 (a renewal that matches no row, or none possible for a whole lease, means the job
may be someone else's now: the attempt kills its command and writes nothing), lose the
attempts whose node's daemon went stale, and read cancels from the rows (a NOTIFY is lost
while the listener is disconnected).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from skeleton_app.config import Settings
from skeleton_app.errors import RegistryError
from skeleton_app.ops.jobs.attempt import AttemptRun
from skeleton_app.registry.job_records import JobStore
from skeleton_app.registry.records import NodeEntry


def watch_leases(runs: Sequence[AttemptRun], store: JobStore, settings: Settings,
                 entries: Mapping[str, NodeEntry], *,
                 clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] = lambda line: None) -> None:
    lease = settings.jobs.lease
    stale_after = settings.registry.stale_after
    for run in runs:
        if run.finished.is_set() or run.lease_lost.is_set():
            continue
        entry = entries.get(run.node.id)
        if entry is not None and entry.is_stale(stale_after):
            age = "never" if entry.seen_ago is None else f"{entry.seen_ago:.0f} s ago"
            run.node_gone(f"daemon stale (last heartbeat {age})")
        now = clock()
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
