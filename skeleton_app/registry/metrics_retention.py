"""Retention and down-sampling of the heartbeat history (node_metrics), done by each daemon
for its own rows: no cron job, and a node role can touch only its own rows anyway (RLS).

The steps, chosen so that every view of the history reads rows at least as fine as its
buckets (`cluster top`: the last minutes; `skeleton web`: 1 h in 30 s buckets, 24 h in 12 min,
7 d in 84 min):

- raw rows (step 0, one per heartbeat: 720 an hour at the default 5 s) are kept 2 h: the 1 h
  chart reads only raw rows, with an hour of slack;
- then one row per minute (step 60), kept 24 h: the 24 h chart's 12 min buckets hold 12;
- then one row per 10 minutes (step 600) until `registry.metrics_retention` (7 d by
  default): the 7 d chart's buckets hold 8 or 9; older rows are deleted.

A node then keeps about 1440 + 1380 + 864 = 3700 rows for a week instead of 121,000 (the
figures measured by bench/metrics_history.py are in the README). A down-sampled row holds
the averages of the rows it replaces weighted by their `samples` (NULLs left out), the max
of `jobs_running`, and the sum of `samples`; per-GPU arrays are averaged element by element.
Its `at` is its bucket's start, so a row falls in the same read bucket as its heartbeats did.

`prune_history` runs once a minute per daemon (once per heartbeat while a backlog lasts), in
one transaction bounded by a statement timeout and by the rows it reads (MAX_ROWS: a backlog
takes several prunes), and skips when another process prunes the same node (an advisory lock
it only tries): a heartbeat is never held up for long.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from skeleton_app.registry.session import PostgresSession

DEFAULT_RETENTION = 7 * 24 * 3600.0
PRUNE_EVERY = 60.0  # seconds between two prunes by one daemon
PRUNE_TIMEOUT_MS = 2000  # the whole prune: a slow database skips it, not the heartbeats
# Rows one prune reads per tier, and deletes: a backlog (a daemon that never pruned, a week of
# rows from before migration 0005) is worked off over several prunes, a minute apart, each
# well within the timeout (1680 rows: 0.16 s on a 2-core machine at load 20).
MAX_ROWS = 2000
MAX_DELETE = 20000


@dataclass(frozen=True, slots=True)
class Tier:
    """Rows finer than `step` seconds and older than `after` become one row per `step`."""

    step: int
    after: float


TIERS: tuple[Tier, ...] = (Tier(step=60, after=2 * 3600.0), Tier(step=600, after=24 * 3600.0))


@dataclass(frozen=True, slots=True)
class PruneOutcome:
    """What one prune did (for logs and tests). `skipped`: another process held the lock."""

    deleted: int = 0  # rows older than the retention
    merged: int = 0  # rows replaced by down-sampled ones
    written: int = 0  # down-sampled rows written
    skipped: bool = False
    more: bool = False  # a limit was reached: a backlog is left for the next prunes


def _wavg(column: str, weight: str = "w") -> str:
    """The average of `column` weighted by `weight`, NULLs left out (in SQL)."""
    return (f"sum({column}::float8 * {weight})"
            f" / nullif(sum({weight}) FILTER (WHERE {column} IS NOT NULL), 0)")


_SCALARS = ("load1", "cpu_busy")
_BIGINTS = ("mem_total", "mem_available", "disk_total", "disk_free")

# One tier for one node: delete the finer rows older than the cutoff (aligned to the step, so
# every bucket it closes is complete) together with any row of this step already in those
# buckets (a clock that went back), and insert their weighted averages, one row per bucket.
_DOWNSAMPLE_SQL = f"""
WITH gone AS (
    DELETE FROM node_metrics
    WHERE node_id = %(node)s AND (
        (step < %(step)s AND at < %(cutoff)s)
        -- ARRAY(): computed once (an IN subquery under row-level security ran once per
        -- row: 1800 rows took over 2 s)
        OR (step = %(step)s AND at = ANY(ARRAY(
            SELECT DISTINCT date_bin(make_interval(secs => %(step)s), f.at,
                                     'epoch'::timestamptz)
            FROM node_metrics f
            WHERE f.node_id = %(node)s AND f.step < %(step)s AND f.at < %(cutoff)s))))
    RETURNING *
), rows AS (
    SELECT date_bin(make_interval(secs => %(step)s), at, 'epoch'::timestamptz) AS b,
           samples AS w, *
    FROM gone
), gpus AS (
    SELECT r.b, g.i, {_wavg("g.util", "r.w")} AS util, {_wavg("g.used", "r.w")} AS used,
           {_wavg("g.total", "r.w")} AS total
    FROM rows r,
         unnest(r.gpu_util, r.gpu_mem_used, r.gpu_mem_total) WITH ORDINALITY
             AS g(util, used, total, i)
    GROUP BY r.b, g.i
), gpu_arrays AS (  -- joined, not a subquery per bucket (that was quadratic: 4.5 s)
    SELECT b, array_agg(util ORDER BY i) AS util, array_agg(used ORDER BY i) AS used,
           array_agg(total ORDER BY i) AS total
    FROM gpus GROUP BY b
), buckets AS (
    SELECT r.b, sum(r.w) AS w,
           {", ".join(f"{_wavg(c)} AS {c}" for c in _SCALARS)},
           {", ".join(f"round({_wavg(c)})::bigint AS {c}" for c in _BIGINTS)},
           max(r.jobs_running) AS jobs_running
    FROM rows r
    GROUP BY r.b
), written AS (
    INSERT INTO node_metrics (node_id, at, step, samples, {", ".join(_SCALARS + _BIGINTS)},
                              jobs_running, gpu_util, gpu_mem_used, gpu_mem_total)
    SELECT %(node)s, k.b, %(step)s, k.w, {", ".join(f"k.{c}" for c in _SCALARS + _BIGINTS)},
           k.jobs_running, a.util, a.used, a.total
    FROM buckets k LEFT JOIN gpu_arrays a ON a.b = k.b
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM written)
"""

# The tier's cutoff: buckets that ended `after` seconds ago, but no further than the bucket of
# the MAX_ROWS-th oldest finer row (a bucket is always taken whole).
_CUTOFF_SQL = """
SELECT least(
    date_bin(make_interval(secs => %(step)s), now() - make_interval(secs => %(after)s),
             'epoch'::timestamptz),
    (SELECT date_bin(make_interval(secs => %(step)s), at, 'epoch'::timestamptz)
            + make_interval(secs => %(step)s)
     FROM node_metrics WHERE node_id = %(node)s AND step < %(step)s
     ORDER BY at OFFSET %(rows)s LIMIT 1))
"""

_DELETE_SQL = """
DELETE FROM node_metrics WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM node_metrics
    WHERE node_id = %(node)s AND at < now() - make_interval(secs => %(retention)s)
    LIMIT %(rows)s))
"""


def prune(conn: psycopg.Connection[Any], node_id: str, *, retention: float,
          tiers: tuple[Tier, ...] = TIERS) -> PruneOutcome:
    """Delete `node_id`'s rows older than `retention` seconds and down-sample the rest by
    `tiers`, in one transaction (the caller's connection, autocommit)."""
    if retention <= 0:
        raise ValueError("retention must be positive")
    merged = written = 0
    more = False
    with conn.transaction():
        conn.execute(f"SET LOCAL statement_timeout = {PRUNE_TIMEOUT_MS}")
        locked = conn.execute(
            "SELECT pg_try_advisory_xact_lock(hashtext('skeleton node_metrics'),"
            " hashtext(%s))", (node_id,)).fetchone()
        if not locked or not locked[0]:
            return PruneOutcome(skipped=True)
        deleted = conn.execute(_DELETE_SQL, {"node": node_id, "retention": retention,
                                             "rows": MAX_DELETE}).rowcount
        more = deleted >= MAX_DELETE
        for tier in tiers:
            if tier.after >= retention:
                break  # those rows are deleted before they would be down-sampled
            cutoff = conn.execute(_CUTOFF_SQL, {"step": tier.step, "after": tier.after,
                                                "node": node_id,
                                                "rows": MAX_ROWS}).fetchone()
            counts = conn.execute(_DOWNSAMPLE_SQL, {
                "node": node_id, "step": tier.step,
                "cutoff": cutoff[0] if cutoff else None}).fetchone()
            if counts:
                merged += int(counts[0])
                written += int(counts[1])
                more = more or int(counts[0]) >= MAX_ROWS
    return PruneOutcome(deleted=max(0, deleted), merged=merged, written=written, more=more)


class MetricsRetention(PostgresSession):
    """The retention part of PostgresRegistry (called by the node daemons, each at most
    every PRUNE_EVERY seconds for its own node)."""

    def prune_history(self, node_id: str, *,
                      retention: float = DEFAULT_RETENTION) -> PruneOutcome:
        """Prune and down-sample `node_id`'s history (see the module docstring)."""
        with self._session(f"cannot prune the metrics history of {node_id}") as conn:
            return prune(conn, node_id, retention=retention)
