"""Parse what `nvidia-smi --query-gpu` prints into typed values.

The status probe (`payloads/status.sh`) runs `nvidia-smi` with `QUERY_ARGS` and hands back its exit
code and output; `report_from_command` turns that pair into a `GpuReport`:

    exit 127 (no nvidia-smi on PATH)    -> GpuReport.missing()   a node without a GPU
    exit 0, rows parse                  -> GpuReport.found(gpus)
    any other exit, or unparseable rows -> GpuReport.failed(first line), e.g. the driver message

A leaf module: no I/O, no imports from the project, so the node daemon can reuse it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

# The columns the probe asks for, in the order they come back with `noheader`.
QUERY_FIELDS: tuple[str, ...] = (
    "index",
    "name",
    "uuid",
    "memory.total",
    "memory.used",
    "memory.free",
    "utilization.gpu",
    "temperature.gpu",
    "power.draw",
    "driver_version",
)
QUERY_ARGS: tuple[str, ...] = (
    "--query-gpu=" + ",".join(QUERY_FIELDS),
    "--format=csv,noheader,nounits",
)

# Exit code of a shell that could not find the command: the node has no NVIDIA tooling at all.
EXIT_NOT_FOUND = 127

# A value nvidia-smi prints instead of a number: "[N/A]", "[Not Supported]", "[Unknown Error]",
# "[GPU requires reset]", or a bare "N/A" in some driver versions.
_UNAVAILABLE = re.compile(r"^\[.*\]$|^N/A$", re.IGNORECASE)
# A number with an optional unit, as printed without `nounits` ("143771 MiB", "0 %", "126.35 W").
_NUMBER = re.compile(r"^([-+]?\d+(?:\.\d+)?)\s*(?:[A-Za-z%°]+)?$")
# "memory.total [MiB]" in a header line: the field name is before the bracket.
_HEADER_UNIT = re.compile(r"\s*\[[^\]]*\]\s*$")
_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_.]*$")


@dataclass(frozen=True, slots=True)
class Gpu:
    """One GPU as nvidia-smi reported it. None means the driver did not report that value."""

    index: int
    name: str | None
    uuid: str | None = None
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    memory_free_mib: int | None = None
    utilization_pct: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    driver: str | None = None


class GpuState(enum.StrEnum):
    """What the GPU probe found. Values are stable: they appear in JSON."""

    OK = "ok"  # nvidia-smi answered; `gpus` lists what it saw (possibly none)
    NONE = "none"  # no nvidia-smi on the node: not a GPU node
    ERROR = "error"  # nvidia-smi is there but failed (driver broken, timed out, garbage)


@dataclass(frozen=True, slots=True)
class GpuReport:
    """The GPU part of a node's status. Build it with the class methods, not directly."""

    state: GpuState
    gpus: tuple[Gpu, ...] = ()
    error: str | None = None
    exit_code: int | None = None

    @classmethod
    def found(cls, gpus: tuple[Gpu, ...] | list[Gpu]) -> GpuReport:
        return cls(GpuState.OK, gpus=tuple(gpus), exit_code=0)

    @classmethod
    def missing(cls) -> GpuReport:
        return cls(GpuState.NONE, exit_code=EXIT_NOT_FOUND)

    @classmethod
    def failed(cls, message: str, *, exit_code: int | None = None) -> GpuReport:
        return cls(GpuState.ERROR, error=message, exit_code=exit_code)


def parse_gpu_query(text: str) -> list[Gpu]:
    """Parse `nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]` output.

    Without a header the columns must be `QUERY_FIELDS` in order. With a header (any subset and
    order of fields, units in brackets), columns are matched by name and absent ones are None.
    Empty output is no GPUs. Raises ValueError naming the line when a row does not fit, so that
    a driver's prose printed with exit 0 is reported, never mistaken for a GPU.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    fields: tuple[str, ...] = QUERY_FIELDS
    if _is_header(lines[0]):
        fields = tuple(_HEADER_UNIT.sub("", cell).strip() for cell in lines[0].split(","))
        lines = lines[1:]
    return [_parse_row(line, fields, position) for position, line in enumerate(lines)]


def report_from_command(exit_code: int, output: str) -> GpuReport:
    """Classify one run of the query: missing tool, driver failure, or parsed GPUs."""
    if exit_code == EXIT_NOT_FOUND:
        return GpuReport.missing()
    if exit_code != 0:
        message = first_line(output) or f"nvidia-smi failed with exit code {exit_code}"
        return GpuReport.failed(message, exit_code=exit_code)
    try:
        return GpuReport.found(parse_gpu_query(output))
    except ValueError as exc:
        return GpuReport.failed(f"unexpected nvidia-smi output: {exc}", exit_code=exit_code)


def first_line(text: str) -> str:
    """The first non-blank line, stripped ("" when there is none)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _is_header(line: str) -> bool:
    # A data row starts with the GPU index (a number); a header row is all field names such as
    # "memory.total [MiB]". Prose like "No devices were found" is neither: it fails as a row.
    cells = [_HEADER_UNIT.sub("", cell).strip() for cell in line.split(",")]
    return all(_FIELD_NAME.match(cell) for cell in cells)


def _parse_row(line: str, fields: tuple[str, ...], position: int) -> Gpu:
    cells = [cell.strip() for cell in line.split(",")]
    if len(cells) != len(fields):
        raise ValueError(f"expected {len(fields)} fields, got {len(cells)}: {line!r}")
    row = dict(zip(fields, cells, strict=True))
    index = _number(row, "index", line)
    return Gpu(
        # A query without `index` still lists GPUs in index order.
        index=position if index is None else int(index),
        name=_text(row.get("name", row.get("gpu_name"))),
        uuid=_text(row.get("uuid", row.get("gpu_uuid"))),
        memory_total_mib=_integer(row, "memory.total", line),
        memory_used_mib=_integer(row, "memory.used", line),
        memory_free_mib=_integer(row, "memory.free", line),
        utilization_pct=_integer(row, "utilization.gpu", line),
        temperature_c=_integer(row, "temperature.gpu", line),
        power_w=_number(row, "power.draw", line),
        driver=_text(row.get("driver_version")),
    )


def _text(cell: str | None) -> str | None:
    if cell is None or not cell or _UNAVAILABLE.match(cell):
        return None
    return cell


def _number(row: dict[str, str], field: str, line: str) -> float | None:
    cell = _text(row.get(field))
    if cell is None:
        return None
    match = _NUMBER.match(cell)
    if match is None:
        raise ValueError(f"{field}: expected a number, got {cell!r} in {line!r}")
    return float(match.group(1))


def _integer(row: dict[str, str], field: str, line: str) -> int | None:
    value = _number(row, field, line)
    return None if value is None else round(value)
