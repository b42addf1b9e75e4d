"""Routing (pure, no I/O): which node runs a job, and why. Registry rows, the queue's `Load`
and the preflight results in; a `Decision` out (a `Route`, or None, and a `reason` that
lists every node considered).

Candidates: approved and enabled, the engine's role in the node's roles, a daemon heartbeat
fresher than `registry.stale_after`, not cooling down after a lost job, a free slot, enough
free GPU memory for a GPU engine, and the engine's preflight passed (its tools and
requires present). Each rejection is recorded with its reason.

Score (lowest wins; docs/plans/jobs.md section 3, policy `score-v1`):

    cpu   = metrics.cpu_busy (0..1 of all CPUs)  else  load[0] / cpu_count
    score = cpu + running/slots + 0.5 * (1 - mem_available/mem_total)
                [+ 0.5 * (1 - gpu_free/gpu_total) for an engine with gpu_mem_mib]

`slots` is the node's label `slots`, else `jobs.slots`, else its CPU count. A metric the
node does not report counts as busy (cpu 1, memory full), so a node that tells us nothing
loses to one that tells us it is idle. Ties go to the node idle longest (the oldest end of
its latest attempt; never used counts as oldest), then to the node id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from skeleton_app.engines import Engine
from skeleton_app.registry.job_records import Load, Route
from skeleton_app.registry.records import NodeEntry

POLICY = "score-v1"
PREFLIGHT_PENDING = "preflight pending"  # not checked yet: the dispatcher checks, then retries


@dataclass(frozen=True, slots=True)
class Decision:
    """Where the job goes (None: nowhere now), the reason stored in the attempt, and the
    nodes whose preflight the caller should run before asking again."""

    route: Route | None
    reason: Mapping[str, Any]
    needs_preflight: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Scored:
    node_id: str
    score: float
    terms: dict[str, Any]
    heartbeat_age_s: float | None
    idle_since: datetime | None


def node_slots(entry: NodeEntry, default_slots: int | None) -> int:
    """The node label `slots` (a positive integer), else `jobs.slots`, else its CPU count."""
    labels = entry.spec.labels or {}
    raw = labels.get("slots")
    if raw is not None:
        try:
            value = int(str(raw).strip())
        except ValueError:
            value = 0
        if value > 0:
            return value
    if default_slots is not None and default_slots > 0:
        return default_slots
    cpus = _number((entry.spec.capabilities or {}).get("cpu_count"))
    return max(1, int(cpus)) if cpus is not None and cpus >= 1 else 1


def heartbeat_age(entry: NodeEntry, now: datetime) -> float | None:
    """Seconds since the node's last heartbeat by the database's clock; None: never."""
    if entry.last_seen is not None:
        try:
            return max(0.0, (now - entry.last_seen).total_seconds())
        except TypeError:  # naive vs aware datetimes: fall back to the row's own age
            pass
    return entry.seen_ago


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def cpu_term(entry: NodeEntry) -> float | None:
    """`cpu_busy` when the heartbeat has it, else load[0]/cpu_count; None: unknown."""
    metrics = entry.metrics or {}
    busy = _number(metrics.get("cpu_busy"))
    if busy is not None:
        return min(max(busy, 0.0), 1.0)
    load = metrics.get("load")
    first = _number(load[0]) if isinstance(load, list | tuple) and load else None
    cpus = _number((entry.spec.capabilities or {}).get("cpu_count"))
    if first is None or cpus is None or cpus < 1:
        return None
    return max(first, 0.0) / cpus


def mem_used(entry: NodeEntry) -> float | None:
    """1 - mem_available/mem_total; None: unknown."""
    metrics = entry.metrics or {}
    total, available = _number(metrics.get("mem_total")), _number(metrics.get("mem_available"))
    if total is None or available is None or total <= 0:
        return None
    return min(max(1.0 - available / total, 0.0), 1.0)


def gpu_memory(entry: NodeEntry) -> tuple[float, float] | None:
    """(free MiB, total MiB) of the node's GPU with the most free memory; None: no GPU."""
    gpu = (entry.metrics or {}).get("gpu")
    gpus = gpu.get("gpus") if isinstance(gpu, Mapping) else None
    best: tuple[float, float] | None = None
    for item in gpus if isinstance(gpus, list) else ():
        if not isinstance(item, Mapping):
            continue
        free, total = _number(item.get("memory_free_mib")), _number(item.get("memory_total_mib"))
        if free is None or total is None or total <= 0:
            continue
        if best is None or free > best[0]:
            best = (free, total)
    return best


def _rejection(entry: NodeEntry, engine: Engine, load: Load, *, stale_after: float,
               default_slots: int | None,
               preflight: Mapping[str, str | None]) -> str | None:
    node_id = entry.node.id
    if not entry.approved:
        return "not approved"
    if not entry.enabled:
        return "disabled"
    if engine.role not in entry.node.roles:
        return f"no role {engine.role}"
    age = heartbeat_age(entry, load.now)
    if age is None:
        return "no daemon heartbeat"
    if age >= stale_after:
        return f"daemon stale (last heartbeat {age:.0f} s ago)"
    cooling = load.cooldown.get(node_id)
    if cooling is not None and cooling[0] > load.now:
        return f"cool-down until {cooling[0]:%H:%M:%S}: {cooling[1]}"
    running, slots = load.running.get(node_id, 0), node_slots(entry, default_slots)
    if running >= slots:
        return f"slots full ({running}/{slots})"
    if engine.gpu_mem_mib > 0:
        gpu = gpu_memory(entry)
        if gpu is None:
            return "no GPU reported"
        if gpu[0] < engine.gpu_mem_mib:
            return f"GPU memory {gpu[0]:.0f} MiB free, needs {engine.gpu_mem_mib}"
    if node_id not in preflight:
        return PREFLIGHT_PENDING
    return preflight[node_id]


def _score(entry: NodeEntry, engine: Engine, load: Load, default_slots: int | None) -> _Scored:
    node_id = entry.node.id
    running, slots = load.running.get(node_id, 0), node_slots(entry, default_slots)
    cpu, mem = cpu_term(entry), mem_used(entry)
    score = (1.0 if cpu is None else cpu) + running / slots + 0.5 * (1.0 if mem is None else mem)
    terms: dict[str, Any] = {"cpu": None if cpu is None else round(cpu, 3),
                             "slots": f"{running}/{slots}",
                             "mem": None if mem is None else round(mem, 3)}
    if engine.gpu_mem_mib > 0:
        gpu = gpu_memory(entry)
        gpu_used = 1.0 if gpu is None else min(max(1.0 - gpu[0] / gpu[1], 0.0), 1.0)
        score += 0.5 * gpu_used
        terms["gpu"] = round(gpu_used, 3)
    age = heartbeat_age(entry, load.now)
    return _Scored(node_id, score, terms, None if age is None else round(age, 1),
                   load.idle_since.get(node_id))


def _tie_key(item: _Scored) -> tuple[float, float, str]:
    # Scores are compared to 1e-9 (float noise is not a preference); then idle longest (no
    # attempt ever: oldest of all); then the id, so the choice is deterministic.
    idle = item.idle_since.timestamp() if item.idle_since is not None else -math.inf
    return (round(item.score, 9), idle, item.node_id)


def decide(engine: Engine, entries: Sequence[NodeEntry], load: Load, *,
           stale_after: float, default_slots: int | None = None,
           preflight: Mapping[str, str | None] | None = None,
           retry_of: Mapping[str, Any] | None = None) -> Decision:
    """Route one job of `engine`. `preflight`: node id -> None (passed) or the failure line;
    a node missing from it is rejected as "preflight pending" and listed in
    `needs_preflight` (only nodes that pass every other check)."""
    checks = preflight or {}
    others: dict[str, Any] = {}
    scored: list[_Scored] = []
    pending: list[str] = []
    held: list[_Scored] = []  # pending nodes, scored: one that would win holds the job
    for entry in sorted(entries, key=lambda e: e.node.id):
        why = _rejection(entry, engine, load, stale_after=stale_after,
                         default_slots=default_slots, preflight=checks)
        if why == PREFLIGHT_PENDING:
            pending.append(entry.node.id)
            held.append(_score(entry, engine, load, default_slots))
        if why is not None:
            others[entry.node.id] = why
            continue
        scored.append(_score(entry, engine, load, default_slots))
    reason: dict[str, Any] = {"policy": POLICY, "engine": engine.name, "role": engine.role}
    if retry_of:
        reason["retry_of"] = dict(retry_of)
    if not scored:
        reason.update(chosen=None, candidates=0, others=others)
        return Decision(None, reason, tuple(pending))
    scored.sort(key=_tie_key)
    best = scored[0]
    # A node not checked yet that would score best is waited for (its check wakes the
    # dispatcher), not passed over: else a fresh dispatcher (each `submit --wait`) sends
    # the job to whichever node's preflight came back first, however busy.
    waiting = min(held, key=_tie_key, default=None)
    if waiting is not None and _tie_key(waiting) < _tie_key(best):
        reason.update(chosen=None, candidates=0, others=others,
                      waits_for_preflight=waiting.node_id)
        return Decision(None, reason, tuple(pending))
    for item in scored[1:]:
        others[item.node_id] = {"score": round(item.score, 3), "terms": item.terms}
    for item in held:  # scored worse while its check runs: `jobs show` still says by how much
        others[item.node_id] = {"score": round(item.score, 3), "terms": item.terms,
                                "preflight": "pending"}
    reason.update(chosen=best.node_id, score=round(best.score, 3), terms=best.terms,
                  heartbeat_age_s=best.heartbeat_age_s, candidates=len(scored),
                  others=dict(sorted(others.items())))
    return Decision(Route(best.node_id, reason), reason, tuple(pending))


# ------------------------------------------------------------------ `jobs show`


def _terms_text(terms: object) -> str:
    if not isinstance(terms, Mapping):
        return ""
    cpu, mem, gpu = (_number(terms.get(k)) for k in ("cpu", "mem", "gpu"))
    parts = ["cpu ?" if cpu is None else f"cpu {cpu:.2f}",
             f"{_clean(terms.get('slots'), 20)} slots",
             "mem ?" if mem is None else f"mem {mem * 100:.0f}% used"]
    if "gpu" in terms:
        parts.append("gpu ?" if gpu is None else f"gpu {gpu * 100:.0f}% used")
    return ", ".join(parts)


def _clean(value: object, limit: int = 120) -> str:
    # A reason comes from a database row: untrusted text, shown in a terminal.
    text = str(value)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def explain(reason: Mapping[str, Any]) -> str:
    """One line for `jobs show`, e.g. "linux-02: lowest score 0.41 of 2 candidates (cpu 0.05,
    1/2 slots, mem 36% used); retry of attempt 1 on linux-01 (lost); skipped: linux-03
    (cool-down until 14:02:11: lost job 17), linux-04 (no role stt_batch)"."""
    if not isinstance(reason, Mapping) or not reason:
        return "no routing reason recorded"
    chosen = reason.get("chosen")
    others = reason.get("others")
    others = others if isinstance(others, Mapping) else {}
    parts: list[str] = []
    if chosen:
        n = reason.get("candidates")
        score = _number(reason.get("score"))
        head = f"{_clean(chosen, 63)}: lowest score {score:.2f}" if score is not None \
            else f"{_clean(chosen, 63)}: chosen"
        if isinstance(n, int) and not isinstance(n, bool):
            head += f" of {n} candidate{'s' if n != 1 else ''}"
        terms = _terms_text(reason.get("terms"))
        parts.append(f"{head} ({terms})" if terms else head)
    elif reason.get("waits_for_preflight"):
        parts.append(f"waiting for {_clean(reason['waits_for_preflight'], 63)}'s preflight"
                     " (it would score best)")
    else:
        parts.append("no node could take it")
    retry = reason.get("retry_of")
    if isinstance(retry, Mapping):
        text = f"retry of attempt {_clean(retry.get('attempt'), 10)}"
        if retry.get("node"):
            text += f" on {_clean(retry.get('node'), 63)}"
        if retry.get("outcome"):
            text += f" ({_clean(retry.get('outcome'), 20)})"
        parts.append(text)
    scored = [f"{_clean(k, 63)} {float(v['score']):.2f}" for k, v in others.items()
              if isinstance(v, Mapping) and _number(v.get("score")) is not None]
    skipped = [f"{_clean(k, 63)} ({_clean(v)})" for k, v in others.items()
               if not isinstance(v, Mapping)]
    if scored:
        parts.append("other scores: " + ", ".join(scored))
    if skipped:
        parts.append("skipped: " + ", ".join(skipped))
    return "; ".join(parts)
