"""The heartbeats as a time series (migration 0004): one row per heartbeat written with it,
read back as `MetricSample`s averaged into buckets (`cluster top`'s sparklines, `skeleton web`'s
charts).

A node's heartbeat is untrusted input: `sample_values` keeps only finite numbers in sane
ranges (anything else is stored as NULL), and reads go through the same check, so a row
written by anything else cannot put a NaN, a negative size or a string into a chart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from skeleton_app.registry.session import PostgresSession

MAX_BYTES = float(1 << 60)  # a memory or disk size beyond this is a lie, not a machine
MAX_LOAD = 1e6
MAX_GPUS = 64
MAX_MIB = float(1 << 40)


@dataclass(frozen=True, slots=True)
class MetricSample:
    """One heartbeat, or the average of the heartbeats of one bucket. None: not reported."""

    at: float  # epoch seconds (a bucket's start)
    load1: float | None = None
    cpu_busy: float | None = None  # 0..1
    mem_total: float | None = None  # bytes
    mem_available: float | None = None
    disk_total: float | None = None  # bytes
    disk_free: float | None = None
    gpu_util: tuple[float | None, ...] = ()  # percent, per GPU
    gpu_mem_used: tuple[float | None, ...] = ()  # MiB, per GPU
    gpu_mem_total: tuple[float | None, ...] = ()
    jobs_running: int | None = None

    @property
    def mem_used_fraction(self) -> float | None:
        if not self.mem_total or self.mem_available is None:
            return None
        return min(1.0, max(0.0, 1.0 - self.mem_available / self.mem_total))

    @property
    def disk_used_fraction(self) -> float | None:
        if not self.disk_total or self.disk_free is None:
            return None
        return min(1.0, max(0.0, 1.0 - self.disk_free / self.disk_total))


def _number(value: object, high: float, low: float = 0.0) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # a JSON integer of 400 digits: jsonb keeps it, a float cannot
        return None
    return number if math.isfinite(number) and low <= number <= high else None


def _numbers(values: Sequence[object], high: float) -> tuple[float | None, ...]:
    return tuple(_number(v, high) for v in values[:MAX_GPUS])


def sample_values(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of one heartbeat (the daemon's `agent.metrics.metrics()` dict)."""
    load = metrics.get("load")
    gpus: list[Mapping[str, Any]] = []
    gpu = metrics.get("gpu")
    if isinstance(gpu, Mapping) and isinstance(gpu.get("gpus"), list):
        gpus = [g for g in gpu["gpus"][:MAX_GPUS] if isinstance(g, Mapping)]
    jobs = metrics.get("jobs_running")
    return {
        "load1": _number(load[0], MAX_LOAD) if isinstance(load, list) and load else None,
        "cpu_busy": _number(metrics.get("cpu_busy"), 1.0),
        "mem_total": _number(metrics.get("mem_total"), MAX_BYTES),
        "mem_available": _number(metrics.get("mem_available"), MAX_BYTES),
        "disk_total": _number(metrics.get("disk_total"), MAX_BYTES),
        "disk_free": _number(metrics.get("disk_free"), MAX_BYTES),
        "gpu_util": [_number(g.get("utilization_pct"), 100.0) for g in gpus],
        "gpu_mem_used": [_number(g.get("memory_used_mib"), MAX_MIB) for g in gpus],
        "gpu_mem_total": [_number(g.get("memory_total_mib"), MAX_MIB) for g in gpus],
        "jobs_running": int(jobs) if isinstance(jobs, int) and not isinstance(jobs, bool)
        and 0 <= jobs <= 1_000_000 else None,
    }


INSERT_SAMPLE_SQL = (
    "INSERT INTO node_metrics (node_id, load1, cpu_busy, mem_total, mem_available,"
    " disk_total, disk_free, gpu_util, gpu_mem_used, gpu_mem_total, jobs_running)"
    " VALUES (%(node_id)s, %(load1)s, %(cpu_busy)s, %(mem_total)s, %(mem_available)s,"
    " %(disk_total)s, %(disk_free)s, %(gpu_util)s, %(gpu_mem_used)s, %(gpu_mem_total)s,"
    " %(jobs_running)s) ON CONFLICT DO NOTHING"
)


def insert_sample(conn: psycopg.Connection[Any], node_id: str,
                  metrics: Mapping[str, Any]) -> None:
    """Append one heartbeat to the history (inside the heartbeat's transaction)."""
    conn.execute(INSERT_SAMPLE_SQL, {"node_id": node_id, **sample_values(metrics)})


# Bucket averages in SQL: per-GPU arrays are averaged element by element (WITH ORDINALITY).
# Each row weighs what it stands for (`samples`: 1 for a heartbeat, more for a down-sampled
# row, see metrics_retention.py), so a bucket that mixes steps averages over heartbeats.
# (node_id, at) is indexed (migration 0005): a read scans only its range however big the
# table, and returns at most points + 2 buckets per node, the newest (`per_node`). A node's
# role may write any `at` in its own rows (RLS checks only the node): rows dated after now
# (heartbeats are dated by the server's clock) are not read, and the bound is per node, so
# one node's rows never crowd the others out of a read; its GPU arrays are cut to MAX_GPUS
# here, not after they crossed the wire.
def _wavg(column: str) -> str:
    return (f"sum({column}::float8 * w)"
            f" / nullif(sum(w) FILTER (WHERE {column} IS NOT NULL), 0)")


_HISTORY_SQL = f"""
WITH rows AS (
    SELECT node_id, date_bin(make_interval(secs => %(width)s), at, 'epoch'::timestamptz) AS b,
           samples AS w, load1, cpu_busy, mem_total, mem_available, disk_total, disk_free,
           gpu_util[1:%(gpus)s] AS gpu_util, gpu_mem_used[1:%(gpus)s] AS gpu_mem_used,
           gpu_mem_total[1:%(gpus)s] AS gpu_mem_total, jobs_running
    FROM node_metrics
    WHERE node_id = ANY(%(ids)s::text[]) AND at >= to_timestamp(%(since)s)
          AND at <= now() + make_interval(secs => %(width)s)
), gpus AS (
    SELECT r.node_id, r.b, g.i,
           {_wavg("g.util")} AS util, {_wavg("g.used")} AS used, {_wavg("g.total")} AS total
    FROM rows r,
         unnest(r.gpu_util, r.gpu_mem_used, r.gpu_mem_total) WITH ORDINALITY
             AS g(util, used, total, i)
    GROUP BY r.node_id, r.b, g.i
), gpu_arrays AS (  -- joined: a subquery per bucket scanned every bucket's GPUs each time
    SELECT node_id, b, array_agg(util ORDER BY i) AS util, array_agg(used ORDER BY i) AS used,
           array_agg(total ORDER BY i) AS total
    FROM gpus GROUP BY node_id, b
), buckets AS (
    SELECT r.node_id, r.b,
           {_wavg("r.load1")} AS load1, {_wavg("r.cpu_busy")} AS cpu_busy,
           {_wavg("r.mem_total")} AS mem_total, {_wavg("r.mem_available")} AS mem_available,
           {_wavg("r.disk_total")} AS disk_total, {_wavg("r.disk_free")} AS disk_free,
           max(r.jobs_running) AS jobs_running
    FROM rows r
    GROUP BY r.node_id, r.b
), newest AS (
    SELECT k.*, row_number() OVER (PARTITION BY k.node_id ORDER BY k.b DESC) AS n
    FROM buckets k
)
SELECT k.node_id, extract(epoch FROM k.b)::double precision, k.load1, k.cpu_busy,
       k.mem_total, k.mem_available, k.disk_total, k.disk_free, k.jobs_running,
       a.util, a.used, a.total
FROM newest k LEFT JOIN gpu_arrays a ON a.node_id = k.node_id AND a.b = k.b
WHERE k.n <= %(per_node)s
ORDER BY k.node_id, k.b
"""


def _row_sample(row: Sequence[Any]) -> MetricSample:
    def gpu(values: object, high: float) -> tuple[float | None, ...]:
        return _numbers(values, high) if isinstance(values, list) else ()

    jobs = row[8]
    return MetricSample(
        at=float(row[1]), load1=_number(row[2], MAX_LOAD), cpu_busy=_number(row[3], 1.0),
        mem_total=_number(row[4], MAX_BYTES), mem_available=_number(row[5], MAX_BYTES),
        disk_total=_number(row[6], MAX_BYTES), disk_free=_number(row[7], MAX_BYTES),
        jobs_running=jobs if isinstance(jobs, int) and jobs >= 0 else None,
        gpu_util=gpu(row[9], 100.0), gpu_mem_used=gpu(row[10], MAX_MIB),
        gpu_mem_total=gpu(row[11], MAX_MIB))


class MetricsHistory(PostgresSession):
    """The history part of PostgresRegistry."""

    def metric_history(self, node_ids: Sequence[str], *, seconds: float,
                       points: int = 120) -> dict[str, tuple[MetricSample, ...]]:
        """The last `seconds` of each node's heartbeats in at most about `points` buckets
        (averages), oldest first; nodes without data are absent."""
        if seconds <= 0 or points <= 0:
            raise ValueError("seconds and points must be positive")
        width = max(1.0, seconds / points)
        ids = list(dict.fromkeys(node_ids))
        with self._session("cannot read the metrics history") as conn:
            rows = conn.execute(_HISTORY_SQL, {
                "width": width, "ids": ids, "since": time.time() - seconds,
                "per_node": int(seconds / width) + 2, "gpus": MAX_GPUS,
            }).fetchall()
        out: dict[str, list[MetricSample]] = {}
        for row in rows:
            out.setdefault(str(row[0]), []).append(_row_sample(row))
        return {node: tuple(samples) for node, samples in out.items()}
