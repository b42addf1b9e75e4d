"""What the node status probe reports: the script, its arguments, its parsed output.

The probe is `skeleton_app/payloads/status.sh`, sent on stdin in one round trip per node:

    sh -s -- APP_DIR MANAGER PID_FILE LOCK_FILE UNIT USER_UNIT     (see `probe_args`)

It replies in the payload framing (`skeleton_app.payloads.framing`; its header documents every
key); `parse_status` turns the reply into a frozen `NodeStatus` and never raises: a key that is
missing or unreadable becomes None, so a half-broken node still gets a row. `NodeStatus.as_dict()`
is the JSON form (and what the registry records). The status table's cells are in
`skeleton_app.app.views.status`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from skeleton_app import payloads
from skeleton_app.gpu import GpuReport, report_from_command
from skeleton_app.payloads import framing

SCRIPT_NAME = "status.sh"

_DECIMAL = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node as the probe saw it. Sizes are bytes; None means the probe could not tell."""

    hostname: str | None = None
    daemon_running: bool | None = None
    daemon_pid: int | None = None
    daemon_detail: str | None = None  # why it is not running, or the systemd state, in words
    load: tuple[float, float, float] | None = None
    mem_available: int | None = None
    mem_total: int | None = None
    gpu: GpuReport | None = None
    disk_free: int | None = None  # available to unprivileged users (df's "Available")
    disk_total: int | None = None
    uptime_s: float | None = None
    code_version: str | None = None
    complete: bool = False  # the probe's last line arrived: nothing was cut off

    @property
    def mem_used(self) -> int | None:
        if self.mem_total is None or self.mem_available is None:
            return None
        return max(self.mem_total - self.mem_available, 0)

    @property
    def disk_used(self) -> int | None:
        if self.disk_total is None or self.disk_free is None:
            return None
        return max(self.disk_total - self.disk_free, 0)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (GPU state and lists included)."""
        data = dataclasses.asdict(self)
        data["load"] = list(self.load) if self.load is not None else None
        return data


def probe_script() -> str:
    """The text of the probe, to send on the SSH channel's stdin."""
    return payloads.text(SCRIPT_NAME)


def probe_args(
    app_dir: str,
    *,
    manager: str,
    pid_file: str,
    lock_file: str,
    unit: str,
    user_unit: bool,
) -> tuple[str, ...]:
    """The probe's positional arguments, in order; quote each one (shlex.join) after `sh -s --`."""
    return (app_dir, manager, pid_file, lock_file, unit, "1" if user_unit else "0")


def parse_status(text: str) -> NodeStatus:
    """Parse the probe's output. Never raises: garbage gives a NodeStatus full of None."""
    frame = framing.parse(text)
    values = {key: value.strip() for key, value in frame.values.items()}
    return NodeStatus(
        hostname=values.get("hostname") or None,
        daemon_running={"1": True, "0": False}.get(values.get("daemon_running", "")),
        daemon_pid=_count(values.get("daemon_pid")),
        daemon_detail=values.get("daemon_detail") or None,
        load=_load(values.get("load")),
        mem_available=_kib(values.get("mem_available_kb")),
        mem_total=_kib(values.get("mem_total_kb")),
        gpu=_gpu(values.get("gpu_exit"), frame.block("gpu") or ""),
        disk_free=_kib(values.get("disk_free_kb")),
        disk_total=_kib(values.get("disk_total_kb")),
        uptime_s=_non_negative(values.get("uptime_s")),
        code_version=values.get("code_version") or None,
        complete=values.get("probe_end") == "1",
    )


def _count(raw: str | None) -> int | None:
    # isdigit() alone accepts "²" and other digits int() refuses.
    if raw is None or not (raw.isascii() and raw.isdigit()):
        return None
    return int(raw)


def _kib(raw: str | None) -> int | None:
    count = _count(raw)
    return None if count is None else count * 1024


def _non_negative(raw: str | None) -> float | None:
    # A plain decimal only: float() would also take "nan", "inf", "-1" and "1_0".
    if raw is None or not _DECIMAL.match(raw):
        return None
    return float(raw)


def _load(raw: str | None) -> tuple[float, float, float] | None:
    parts = (raw or "").split()
    loads = [_non_negative(part) for part in parts]
    if len(loads) != 3 or any(value is None for value in loads):
        return None
    one, five, fifteen = (float(value or 0) for value in loads)
    return (one, five, fifteen)


def _gpu(exit_code: str | None, output: str) -> GpuReport | None:
    code = _count(exit_code)
    return None if code is None else report_from_command(code, output)
