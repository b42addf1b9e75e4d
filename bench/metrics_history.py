"""What the heartbeat history costs (issue 16): rows/s the database takes, and the table's
size after a simulated week of 8 nodes at the default interval, before and after the
daemons' down-sampling (skeleton_app/registry/metrics_retention.py).

    sudo .venv/bin/python -m bench.metrics_history [--nodes 8] [--interval 5] [--days 7]
                                                   [--dsn DSN]

Without --dsn it starts a throwaway PostgreSQL (skeleton_app/testing/localdb.py; root: it
runs as the `postgres` user) and removes it afterwards. Steps, each timed:

1. heartbeats through the real write path (`PostgresRegistry.heartbeat`, each node with its
   own role, row-level security on): heartbeats/s of one connection;
2. a week of synthetic heartbeats per node, back-dated, through the same INSERT as the
   heartbeat's (`INSERT_SAMPLE_SQL` plus the `at` column), in batches: rows/s;
3. the table's size and the history reads (`metric_history`, 1 h / 24 h / 7 d, 120 points,
   all nodes) on that raw week;
4. each node's own prunes (its own role) until its backlog is gone: how many, the slowest;
5. the table's size (after VACUUM FULL: live data only) and the same reads again, and one
   steady-state prune (nothing to do but look).

Prints a markdown report (the README's figures come from it).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from skeleton_app.nodes import Node
from skeleton_app.registry import NodeDefaults, NodeSpec, PostgresRegistry, init_schema
from skeleton_app.registry.metrics_history import INSERT_SAMPLE_SQL, sample_values
from skeleton_app.testing.localdb import start_postgres, stop_postgres

# The heartbeat's INSERT with `at` given (the table's default is now()): the same columns,
# the same checks (sample_values), back-dated.
BACKDATED_SQL = INSERT_SAMPLE_SQL.replace("(node_id,", "(at, node_id,", 1).replace(
    "VALUES (%(node_id)s", "VALUES (%(at)s, %(node_id)s", 1)
BATCH = 5000


def heartbeat_metrics(rng: random.Random) -> dict[str, Any]:
    """A heartbeat as a GPU node's daemon sends it (agent.metrics.metrics())."""
    return {
        "load": [rng.uniform(0, 8), 1.0, 1.0], "cpu_busy": rng.random(),
        "mem_total": 64 << 30, "mem_available": rng.randint(8 << 30, 60 << 30),
        "disk_total": 1 << 40, "disk_free": rng.randint(1 << 38, 1 << 39),
        "gpu": {"state": "ok", "gpus": [
            {"index": i, "utilization_pct": rng.randint(0, 100),
             "memory_used_mib": rng.randint(0, 80000), "memory_total_mib": 81920}
            for i in range(2)]},
        "jobs_running": rng.randint(0, 3),
    }


@contextlib.contextmanager
def database(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    base = tempfile.mkdtemp(prefix="skeleton-bench-pg-")
    shutil.chown(base, "postgres")
    try:
        yield start_postgres(base).dsn
    finally:
        stop_postgres(base)
        shutil.rmtree(base, ignore_errors=True)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def size(dsn: str) -> tuple[int, int]:
    """Rows of node_metrics and its size with indexes (bytes)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*), pg_total_relation_size('node_metrics')"
                           " FROM node_metrics").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def reads(registry: PostgresRegistry, ids: list[str]) -> dict[str, float]:
    out = {}
    for label, seconds in (("1 h", 3600.0), ("24 h", 86400.0), ("7 d", 7 * 86400.0)):
        _, took = timed(lambda s=seconds: registry.metric_history(ids, seconds=s, points=120))
        out[label] = took
    return out


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def run(dsn: str, *, nodes: int, interval: float, days: float) -> str:
    init_schema(dsn)
    defaults = NodeDefaults(user="bench", port=22, app_dir="/srv/app", api_port=8765)
    ids = [f"node-{i:02d}" for i in range(1, nodes + 1)]
    rng = random.Random(16)
    lines = [f"# Heartbeat history: {nodes} nodes, a heartbeat every {interval:g} s,"
             f" {days:g} days", ""]
    with PostgresRegistry(dsn, defaults=defaults) as operator:
        for node_id in ids:
            operator.upsert_node(NodeSpec.from_node(Node(id=node_id, host="10.0.0.1")))
        owns = [PostgresRegistry(operator.issue_credentials(n), defaults=defaults)
                for n in ids]
        try:
            # 1. The real write path.
            count = 400 * nodes // 8 or 50

            def beats() -> None:
                for k in range(count):
                    i = k % nodes
                    owns[i].heartbeat(ids[i], metrics=heartbeat_metrics(rng))

            _, took = timed(beats)
            lines.append(f"- heartbeats (UPDATE nodes + INSERT node_metrics, node roles):"
                         f" {count / took:,.0f}/s on one connection ({took / count * 1000:.1f}"
                         f" ms each); the cluster sends {nodes / interval:.1f}/s")
            # 2. A week, back-dated, through the heartbeat's INSERT.
            per_node = int(days * 86400 / interval)
            start = datetime.now(UTC) - timedelta(days=days)
            total = 0
            started = time.perf_counter()
            with psycopg.connect(dsn, autocommit=True) as conn:
                for node_id in ids:
                    for first in range(0, per_node, BATCH):
                        rows = [{"at": start + timedelta(seconds=k * interval),
                                 "node_id": node_id,
                                 **sample_values(heartbeat_metrics(rng))}
                                for k in range(first, min(per_node, first + BATCH))]
                        with conn.transaction(), conn.cursor() as cur:
                            cur.executemany(BACKDATED_SQL, rows)
                        total += len(rows)
            took = time.perf_counter() - started
            lines.append(f"- a week back-dated through the same INSERT (batches of {BATCH},"
                         f" one transaction each): {total:,} rows in {took:.0f} s,"
                         f" {total / took:,.0f} rows/s")
            raw_rows, raw_size = size(dsn)
            raw_reads = reads(operator, ids)
            # 4. Each node prunes its own backlog, with its own role.
            prunes: list[float] = []
            for own, node_id in zip(owns, ids, strict=True):
                while True:
                    outcome, took = timed(lambda o=own, n=node_id: o.prune_history(n))
                    prunes.append(took)
                    if not outcome.more:
                        break
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("VACUUM FULL node_metrics")
            kept_rows, kept_size = size(dsn)
            kept_reads = reads(operator, ids)
            _, steady = timed(lambda: owns[0].prune_history(ids[0]))
        finally:
            for own in owns:
                own.close()
    lines += [
        f"- {len(prunes)} prunes worked the backlog off (one per heartbeat while it lasts):"
        f" median {statistics.median(prunes) * 1000:.0f} ms, slowest"
        f" {max(prunes) * 1000:.0f} ms; a steady-state prune: {steady * 1000:.0f} ms",
        "",
        "| node_metrics | rows | size (with indexes) | read 1 h | read 24 h | read 7 d |",
        "|---|---:|---:|---:|---:|---:|",
        f"| raw week | {raw_rows:,} | {mib(raw_size)} | "
        + " | ".join(f"{v * 1000:.0f} ms" for v in raw_reads.values()) + " |",
        f"| down-sampled | {kept_rows:,} | {mib(kept_size)} | "
        + " | ".join(f"{v * 1000:.0f} ms" for v in kept_reads.values()) + " |",
        "",
        "(reads: `metric_history` of all nodes, 120 points)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_history",
                                     description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--dsn", default=None, help="a database to use (default: a new one)")
    args = parser.parse_args(argv)
    with database(args.dsn) as dsn:
        sys.stdout.write(run(dsn, nodes=args.nodes, interval=args.interval, days=args.days))
    return 0


if __name__ == "__main__":
    sys.exit(main())
