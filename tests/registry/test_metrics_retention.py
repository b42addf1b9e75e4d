"""Retention and down-sampling of the heartbeat history (registry/metrics_retention.py) on a
real PostgreSQL, with back-dated heartbeats written straight into node_metrics: rows older
than the retention go, old raw rows become minute rows and old minute rows 10-minute rows,
and `metric_history` reads the same averages before and after; a node's own role prunes
only its own rows; a prune that finds the node's lock taken skips."""

from __future__ import annotations

import time
from collections.abc import Sequence

import psycopg
import pytest

from skeleton_app.nodes import Node
from skeleton_app.registry import NodeSpec, PostgresRegistry
from skeleton_app.registry.metrics_history import MetricSample
from skeleton_app.registry.metrics_retention import MAX_ROWS, TIERS, prune

HOUR = 3600.0
WEEK = 7 * 24 * HOUR

# Back-dated heartbeats every `step` seconds between `start` and `end` seconds ago, with
# values that vary (so averages are not trivially equal): load1 is NULL for the first 12 h,
# jobs_running peaks once per hour, two GPUs whose arrays average element by element.
_SYNTHETIC = """
INSERT INTO node_metrics (node_id, at, load1, cpu_busy, mem_total, mem_available,
                          disk_total, disk_free, gpu_util, gpu_mem_used, gpu_mem_total,
                          jobs_running)
SELECT %(node)s, t,
       CASE WHEN i < 8640 THEN NULL ELSE (i %% 13)::float8 / 2 END,
       (i %% 10)::float8 / 10,
       16000000000, 8000000000 + (i %% 100) * 10000000,
       500000000000, 200000000000 - (i %% 50) * 1000000,
       ARRAY[(i %% 100)::float8, 100 - (i %% 100)], ARRAY[(i %% 4000)::float8, 1000],
       ARRAY[8000::float8, 8000],
       CASE WHEN i %% 720 = 0 THEN 5 ELSE i %% 3 END
FROM generate_series(0, floor((%(start)s - %(end)s) / %(step)s)::int) AS i,
     LATERAL (SELECT now() - make_interval(secs => %(start)s - i * %(step)s)) AS a(t)
"""


def add(registry: PostgresRegistry, node_id: str) -> None:
    registry.upsert_node(NodeSpec.from_node(Node(id=node_id, host="10.9.0.1")))


def synthesize(dsn: str, node_id: str, *, start: float, end: float = 0.0,
               step: float = 5.0) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_SYNTHETIC, {"node": node_id, "start": start, "end": end, "step": step})


def prune_all(registry: PostgresRegistry, node_id: str, *, retention: float
              ) -> tuple[int, int]:
    """Prune until nothing is left to do (a backlog takes several prunes, each bounded):
    the rows deleted for the retention, and how many prunes did something."""
    deleted = rounds = 0
    while True:
        outcome = registry.prune_history(node_id, retention=retention)
        assert not outcome.skipped
        if not (outcome.deleted or outcome.merged):
            return deleted, rounds
        deleted += outcome.deleted
        rounds += 1
        assert outcome.merged <= 2 * MAX_ROWS + 2 * 720  # bounded (two tiers, one bucket)


def _common(before: Sequence[MetricSample], after: Sequence[MetricSample]
            ) -> list[tuple[MetricSample, MetricSample]]:
    """The buckets of two readings of one history, paired by start. The first of each is
    cut at `since`, which a down-sampled row straddles; and a bucket boundary that passes
    between the two readings (wall-clock time: CI saw it) shifts the window by one bucket."""
    old = {s.at: s for s in before[1:]}
    new = {s.at: s for s in after[1:]}
    common = sorted(old.keys() & new.keys())
    assert len(common) >= len(old) - 1, (sorted(old), sorted(new))
    return [(old[at], new[at]) for at in common]


def steps(dsn: str, node_id: str) -> dict[int, tuple[int, float, float]]:
    """Per step: rows, and the ages (seconds) of its newest and oldest rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT step, count(*), extract(epoch FROM now() - max(at)),"
            " extract(epoch FROM now() - min(at)) FROM node_metrics WHERE node_id = %s"
            " GROUP BY step", (node_id,)).fetchall()
    return {int(r[0]): (int(r[1]), float(r[2]), float(r[3])) for r in rows}


def test_a_week_of_heartbeats_is_pruned_and_down_sampled(registry: PostgresRegistry,
                                                         db_dsn: str) -> None:
    add(registry, "n1")
    synthesize(db_dsn, "n1", start=WEEK + 2 * HOUR)  # 8 days: two hours past the retention
    raw = steps(db_dsn, "n1")[0][0]
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE raw_copy AS SELECT at FROM node_metrics")
    assert raw == int((WEEK + 2 * HOUR) / 5) + 1
    # 30 h in hour buckets (a multiple of both steps): the edge at 2 h mixes raw and minute
    # rows, the one at 24 h minute and 10-minute rows.
    before = registry.metric_history(["n1"], seconds=30 * HOUR, points=30)["n1"]
    week = registry.metric_history(["n1"], seconds=WEEK, points=42)["n1"]  # 4 h buckets

    started = time.monotonic()
    deleted, rounds = prune_all(registry, "n1", retention=WEEK)
    settled = time.monotonic()  # the last prune found nothing to do
    # Two hours past the retention, and what aged past it while the prunes ran.
    assert 2 * HOUR / 5 <= deleted <= (2 * HOUR + time.monotonic() - started) / 5 + 2
    assert rounds >= raw // MAX_ROWS // 2  # a week's backlog: one bounded chunk at a time
    kept = steps(db_dsn, "n1")
    assert set(kept) == {0, 60, 600}
    # Raw rows only in the last 2 h (plus the minute not closed yet), minute rows up to 24 h,
    # 10-minute rows up to the retention, nothing older.
    assert 2 * HOUR <= kept[0][2] < 2 * HOUR + 60
    assert kept[60][1] >= 2 * HOUR and kept[60][2] < 24 * HOUR + 600
    assert kept[600][1] >= 24 * HOUR and kept[600][2] <= WEEK
    total = sum(n for n, _, _ in kept.values())
    assert total < 4000  # about 3700 instead of 121,000
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        # Every heartbeat since the oldest row kept is still counted, once.
        weights = conn.execute("SELECT sum(samples) FROM node_metrics").fetchone()
        beats = conn.execute("SELECT count(*) FROM raw_copy WHERE at >= (SELECT min(at)"
                             " FROM node_metrics)").fetchone()
    assert weights == beats

    after = registry.metric_history(["n1"], seconds=30 * HOUR, points=30)["n1"]
    for old, new in _common(before, after):
        assert new.load1 == pytest.approx(old.load1, rel=1e-9)
        assert new.cpu_busy == pytest.approx(old.cpu_busy, rel=1e-9)
        assert new.mem_available == pytest.approx(old.mem_available, rel=1e-6)
        assert new.disk_free == pytest.approx(old.disk_free, rel=1e-6)
        assert new.gpu_util == pytest.approx(old.gpu_util, rel=1e-9)
        assert new.gpu_mem_used == pytest.approx(old.gpu_mem_used, rel=1e-9)
        assert new.jobs_running == old.jobs_running == 5  # the max survives averaging
    week_after = registry.metric_history(["n1"], seconds=WEEK, points=42)["n1"]
    starts = next(s.at for s in week[1:] if s.load1 is not None)
    for old, new in _common(week, week_after):
        assert new.cpu_busy == pytest.approx(old.cpu_busy, rel=1e-9)
        assert new.gpu_util == pytest.approx(old.gpu_util, rel=1e-9)
        # A down-sampled row weighs all its heartbeats, also those without a value: close
        # except in the bucket where load1 starts (10-minute rows of mixed heartbeats, whose
        # share of that bucket depends on how long the prunes took: 3.04 vs 3.01 seen).
        assert (new.load1 is None) == (old.load1 is None)
        if old.load1 is not None:
            assert new.load1 == pytest.approx(old.load1,
                                              rel=5e-2 if old.at == starts else 1e-2)

    # Pruning again changes only what aged while the reads above ran (wall-clock time: CI saw
    # a minute close in between): per minute boundary crossed one raw minute (12 heartbeats ->
    # 1 row), per 10-minute boundary ten minute rows -> 1 row and one row past the retention.
    again = registry.prune_history("n1", retention=WEEK)
    minutes = int((time.monotonic() - settled) // 60) + 1
    tens = int((time.monotonic() - settled) // 600) + 1
    assert again.deleted <= tens
    assert again.merged <= 12 * minutes + 10 * tens
    assert again.written <= minutes + tens


def test_a_node_role_prunes_its_own_rows_only(registry: PostgresRegistry, db_dsn: str) -> None:
    add(registry, "n1")
    add(registry, "n2")
    for node in ("n1", "n2"):
        synthesize(db_dsn, node, start=30 * HOUR, step=60)
    dsn = registry.issue_credentials("n1")
    with PostgresRegistry(dsn, defaults=registry._defaults, connect_timeout=5) as own:
        outcome = own.prune_history("n1", retention=26 * HOUR)
        assert 4 * 60 <= outcome.deleted <= 4 * 60 + 2 and outcome.written > 0  # rows age
        assert own.prune_history("n2", retention=HOUR).deleted == 0  # RLS: sees none
    assert set(steps(db_dsn, "n1")) == {0, 60, 600}
    # A 10-minute row starts at its bucket's start: at most one bucket past the retention
    # until the next prune.
    assert steps(db_dsn, "n1")[600][2] <= 26 * HOUR + 600
    assert set(steps(db_dsn, "n2")) == {0}
    assert steps(db_dsn, "n2")[0][0] == 30 * 60 + 1


def test_a_prune_skips_while_another_holds_the_node(registry: PostgresRegistry,
                                                    db_dsn: str) -> None:
    add(registry, "n1")
    synthesize(db_dsn, "n1", start=3 * HOUR)
    with psycopg.connect(db_dsn) as holder, psycopg.connect(db_dsn, autocommit=True) as conn:
        holder.execute("SELECT pg_advisory_xact_lock(hashtext('skeleton node_metrics'),"
                       " hashtext('n1'))")
        assert prune(conn, "n1", retention=WEEK).skipped
        assert not prune(conn, "n2", retention=WEEK).skipped  # another node: its own lock
    assert steps(db_dsn, "n1")[0][0] == int(3 * HOUR / 5) + 1
    assert not registry.prune_history("n1", retention=WEEK).skipped
    assert set(steps(db_dsn, "n1")) == {0, 60}


def test_a_retention_shorter_than_a_tier_deletes_before_down_sampling(
        registry: PostgresRegistry, db_dsn: str) -> None:
    add(registry, "n1")
    synthesize(db_dsn, "n1", start=5 * HOUR, step=30)
    assert TIERS[0].after < 3 * HOUR < TIERS[1].after
    prune_all(registry, "n1", retention=3 * HOUR)
    kept = steps(db_dsn, "n1")
    assert set(kept) == {0, 60} and kept[60][2] <= 3 * HOUR
    with pytest.raises(ValueError):
        registry.prune_history("n1", retention=0)
