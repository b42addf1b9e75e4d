"""What the node status probe reports: the script, its arguments, its parsed output, table cells.

The probe is `skeleton_app/payloads/status.sh`, sent on stdin in one round trip per node:

    sh -s -- APP_DIR MANAGER PID_FILE LOCK_FILE UNIT USER_UNIT     (see `probe_args`)

It prints `key=value` lines (its header documents every key); `parse_status` turns them into a
frozen `NodeStatus` and never raises: a key that is missing or unreadable becomes None, so a
half-broken node still gets a row. The `*_cell` helpers format values for the status table;
`NodeStatus.as_dict()` is the JSON form.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from skeleton_app import payloads
from skeleton_app.gpu import GpuReport, GpuState, first_line, report_from_command

SCRIPT_NAME = "status.sh"

_KEY = re.compile(r"^[a-z][a-z0-9_]*$")
_DECIMAL = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")
_BEGIN = "--- begin "
_END = "--- end "


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
    values, sections = _split(text)
    return NodeStatus(
        hostname=values.get("hostname") or None,
        daemon_running={"1": True, "0": False}.get(values.get("daemon_running", "")),
        daemon_pid=_count(values.get("daemon_pid")),
        daemon_detail=values.get("daemon_detail") or None,
        load=_load(values.get("load")),
        mem_available=_kib(values.get("mem_available_kb")),
        mem_total=_kib(values.get("mem_total_kb")),
        gpu=_gpu(values.get("gpu_exit"), sections.get("gpu", "")),
        disk_free=_kib(values.get("disk_free_kb")),
        disk_total=_kib(values.get("disk_total_kb")),
        uptime_s=_non_negative(values.get("uptime_s")),
        code_version=values.get("code_version") or None,
        complete=values.get("probe_end") == "1",
    )


def _split(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Key/value lines and named multi-line sections. Later keys win; junk lines are skipped."""
    values: dict[str, str] = {}
    sections: dict[str, str] = {}
    section: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        if section is not None:
            if line == _END + section:
                sections[section] = "\n".join(body)
                section, body = None, []
            else:
                body.append(line)
        elif line.startswith(_BEGIN):
            section = line[len(_BEGIN) :]
        else:
            key, sep, value = line.partition("=")
            if sep and _KEY.match(key):
                values[key] = value.strip()
    if section is not None:
        # Output cut off inside a section: keep what arrived, it may still say what went wrong.
        sections[section] = "\n".join(body)
    return values, sections


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


# ---- table cells ---------------------------------------------------------------------------

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
# Marketing prefixes that make the GPU column wide without telling nodes apart.
_GPU_NAME_PREFIXES = ("NVIDIA ", "GeForce ", "Tesla ", "Quadro ")
_SMI_FAILED = "NVIDIA-SMI has failed because it "


def format_bytes(size: int | None) -> str:
    """'512MiB', '3.2GiB', '140GiB'; '-' for unknown."""
    if size is None:
        return "-"
    number, unit = _scale(size)
    return f"{_short_number(number)}{unit}"


def format_usage(used: int | None, total: int | None) -> str:
    """'3.2/15GiB': used and total in the total's unit; '-' when the total is unknown."""
    if total is None:
        return "-"
    number, unit = _scale(total)
    factor = total / number if number else 1
    used_text = "?" if used is None else _short_number(used / factor)
    return f"{used_text}/{_short_number(number)}{unit}"


def format_duration(seconds: float | None) -> str:
    """'3d04h', '5h07m', '12m', '40s'; '-' for unknown."""
    if seconds is None:
        return "-"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def daemon_cell(status: NodeStatus) -> str:
    return {True: "✓", False: "✗", None: "?"}[status.daemon_running]


def load_cell(status: NodeStatus) -> str:
    if status.load is None:
        return "-"
    return " ".join(f"{value:.2f}" for value in status.load)


def mem_cell(status: NodeStatus) -> str:
    """Used/total memory, used meaning not available (MemTotal - MemAvailable)."""
    return format_usage(status.mem_used, status.mem_total)


def disk_cell(status: NodeStatus) -> str:
    """Used/total of the app dir's filesystem, used meaning not available to the app's user."""
    return format_usage(status.disk_used, status.disk_total)


def gpu_cell(report: GpuReport | None, *, width: int = 48) -> str:
    """'H200 0/140GiB 0% 38°C', '8×H200 12/1123GiB 34% 45°C', '-' (no GPU), 'err: ...', '?'."""
    if report is None:
        return "?"
    if report.state is GpuState.NONE or (report.state is GpuState.OK and not report.gpus):
        return "-"
    if report.state is GpuState.ERROR:
        return _truncate("err: " + _short_error(report.error or ""), width)
    gpus = report.gpus
    names = list(dict.fromkeys(_short_gpu_name(gpu.name) for gpu in gpus))
    parts = [("" if len(gpus) == 1 else f"{len(gpus)}×") + "+".join(names)]
    totals = [gpu.memory_total_mib for gpu in gpus]
    if all(total is not None for total in totals):
        used = [gpu.memory_used_mib for gpu in gpus]
        used_sum = None if any(u is None for u in used) else sum(u or 0 for u in used)
        parts.append(format_usage(_mib(used_sum), _mib(sum(t or 0 for t in totals))))
    utils = [gpu.utilization_pct for gpu in gpus if gpu.utilization_pct is not None]
    if utils:
        parts.append(f"{round(sum(utils) / len(utils))}%")
    temps = [gpu.temperature_c for gpu in gpus if gpu.temperature_c is not None]
    if temps:
        parts.append(f"{max(temps)}°C")
    return _truncate(" ".join(parts), width)


def _mib(mib: int | None) -> int | None:
    return None if mib is None else mib * 1024 * 1024


def _scale(size: int) -> tuple[float, str]:
    number = float(size)
    for unit in _UNITS:
        if abs(number) < 1024 or unit == _UNITS[-1]:
            return number, unit
        number /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _short_number(number: float) -> str:
    # Two significant figures are plenty for a table; below 10 one decimal still says something.
    if number == 0:
        return "0"
    if abs(number) < 10 and round(number, 1) != round(number):
        return f"{number:.1f}"
    return f"{number:.0f}"


def _short_gpu_name(name: str | None) -> str:
    if not name:
        return "GPU"
    for prefix in _GPU_NAME_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix) :]
    return name


def _short_error(message: str) -> str:
    # "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure
    # that the latest NVIDIA driver is installed and running." -> its first clause.
    text = first_line(message)
    if text.startswith(_SMI_FAILED):
        text = text[len(_SMI_FAILED) :]
    head, sep, _rest = text.partition(". ")
    return head if sep else text.rstrip(".")


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"
