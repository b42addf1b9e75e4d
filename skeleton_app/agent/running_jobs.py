"""How many voice job attempts run on this node, for the heartbeat and /metrics.

The daemon's role cannot read the jobs table (row-level security keeps the queue the
operator's), so it counts what job.sh leaves on the node: an attempt lives in
`<app_dir>/jobs/<id>/a<n>/`, writes `pgid` (`PID START_TIME BOOT_ID`, as prelude.sh records
a process) when its command starts and `exit` when it ended. An attempt runs while it has a
`pgid` and no `exit` and its leader is that very process (same boot, same start time: a
recycled pid is never counted). No jobs dir: the node never ran a job, the count is None
(absent from the metrics, as a node without the queue).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

MAX_ATTEMPTS_SCANNED = 10_000  # a node with more leftover attempts is not read further


def _boot_id() -> str:
    """This boot's id, as prelude.sh's `this_boot` reads it (`unknown` when unreadable)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def _start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (None: no such process, or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 1:].split()
    if len(fields) < 20 or fields[0] == "Z":
        return None
    return fields[19]


def _runs(attempt: Path, boot: str) -> bool:
    if (attempt / "exit").exists():
        return False
    try:
        record = (attempt / "pgid").read_text(errors="replace").split()
    except OSError:
        return False  # starting (no pgid yet) or not an attempt
    if len(record) < 3 or not record[0].isdigit() or int(record[0]) <= 1:
        return False
    return record[2] == boot and _start_ticks(int(record[0])) == record[1]


def jobs_running(app_dir: str) -> int | None:
    """The attempts running under `app_dir`'s jobs dir; None when there is none."""
    root = Path(app_dir) / "jobs"
    if not root.is_dir():
        return None
    boot = _boot_id()
    count = scanned = 0
    with contextlib.suppress(OSError):
        for job in os.scandir(root):
            if not job.name.isdigit() or not job.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                for attempt in os.scandir(job.path):
                    scanned += 1
                    if scanned > MAX_ATTEMPTS_SCANNED:
                        return count
                    if (attempt.name.startswith("a") and attempt.name[1:].isdigit()
                            and attempt.is_dir(follow_symlinks=False)
                            and _runs(Path(attempt.path), boot)):
                        count += 1
    return count
