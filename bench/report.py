"""Results as values, and their markdown: per-case tables, the goals, the machine.

A row is one tool in one scenario (its values are one per run). Within a scenario the first
row marked `ours` is the reference: every row's "ours ÷ tool" is the ratio of medians.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.measure import CpuShare, median

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    tool: str
    values: tuple[float, ...]
    unit: str  # "s", "ms" or "MiB"
    ours: bool = False

    @property
    def median(self) -> float:
        return median(self.values)


@dataclass(frozen=True, slots=True)
class Goal:
    text: str
    measured: str
    target: str
    met: bool | None  # None: not measured in this run


@dataclass(slots=True)
class Case:
    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cpu: CpuShare | None = None  # who used the machine while the case ran

    def reference(self, scenario: str) -> Row | None:
        return next((r for r in self.rows if r.scenario == scenario and r.ours), None)

    def median_of(self, scenario: str, tool: str) -> float:
        row = next((r for r in self.rows if r.scenario == scenario and r.tool == tool), None)
        return row.median if row else math.nan


def fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "—"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def ratio(a: float, b: float) -> str:
    return "—" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}×"


def verdict(met: bool | None) -> str:
    return {True: "**met**", False: "**MISSED**", None: "not measured"}[met]


def render_case(case: Case) -> str:
    lines = [f"### {case.key}. {case.title}", ""]
    if case.rows:
        lines += ["| scenario | tool | median | min – max | runs | ours ÷ tool |",
                  "|---|---|---:|---:|---:|---:|"]
    for row in case.rows:
        ref = case.reference(row.scenario)
        tool = f"**{row.tool}**" if row.ours else row.tool
        spread = (f"{fmt(min(row.values), row.unit)} – {fmt(max(row.values), row.unit)}"
                  if row.values else "—")
        rel = "—" if ref is None or row is ref else ratio(ref.median, row.median)
        lines.append(f"| {row.scenario} | {tool} | {fmt(row.median, row.unit)} | {spread}"
                     f" | {len(row.values)} | {rel} |")
    if case.rows:
        lines.append("")
    if case.cpu is not None:
        lines.append(f"While it ran: {case.cpu.describe()}")
    lines += [f"- {note}" for note in case.notes]
    return "\n".join(lines) + "\n"


def render_goals(cases: Sequence[Case]) -> str:
    lines = ["| goal | measured | target | verdict |", "|---|---:|---:|---|"]
    for case in cases:
        for g in case.goals:
            lines.append(f"| {case.key}. {g.text} | {g.measured} | {g.target} |"
                         f" {verdict(g.met)} |")
    return "\n".join(lines) + "\n"


def _first_line(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    out = (proc.stdout or proc.stderr).strip().splitlines()
    return out[0] if out else "?"


def machine(tools: Mapping[str, str]) -> str:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = next((int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal:")), 0)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")),
               "?")
    repo = Path(__file__).resolve().parent.parent
    commit = _first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    diff = subprocess.run(["git", "-C", str(repo), "diff", "HEAD", "--", "skeleton_app"],
                          capture_output=True).stdout
    facts = {
        "CPU": f"{os.cpu_count()} × {cpu} (nproc {_first_line(['nproc'])})",
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "OS": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "Python": platform.python_version(),
        "skeleton_app": f"commit {commit}" + (
            f" + uncommitted changes (diff sha1 {hashlib.sha1(diff).hexdigest()[:12]})"
            if diff else ""),
        **tools,
    }
    return "\n".join(f"- {k}: {v}" for k, v in facts.items()) + "\n"


def document(cases: Sequence[Case], *, mode: str, started: dt.datetime, elapsed: float,
             tools: Mapping[str, str], notes: Sequence[str]) -> str:
    head = [f"# skeleton_app benchmark, {started:%Y-%m-%d %H:%M} ({mode})", "",
            f"`python -m bench{' --quick' if mode == 'quick' else ''}`: {elapsed:.0f} s"
            " in all. Medians of the timed runs (after a warm-up); \"ours ÷ tool\" is our"
            " median divided by that tool's, measured in the same run on the same hosts"
            " (below 1 = we are faster).", ""]
    head += [f"- {n}" for n in notes]
    body = ["", "## Goals", "", render_goals(cases), "## Results", ""]
    body += [render_case(c) for c in cases]
    body += ["## Machine", "", machine(tools)]
    return "\n".join(head + body)


def write(text: str, started: dt.datetime, mode: str) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    suffix = "-quick" if mode == "quick" else ""
    path = RESULTS_DIR / f"{started:%Y-%m-%d-%H%M}{suffix}.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
