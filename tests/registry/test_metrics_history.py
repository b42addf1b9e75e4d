"""Migration 0004: every heartbeat also lands in the history, read back in averaged buckets;
hostile values are stored as NULL; a node's own role writes only its own history rows."""

from __future__ import annotations

import math

import psycopg
import pytest

from skeleton_app.nodes import Node
from skeleton_app.registry import NodeSpec, PostgresRegistry

GPU = {"state": "ok", "gpus": [
    {"index": 0, "utilization_pct": 40, "memory_used_mib": 1000, "memory_total_mib": 8000},
    {"index": 1, "utilization_pct": 80, "memory_used_mib": 3000, "memory_total_mib": 8000},
]}


def add(registry: PostgresRegistry, node_id: str) -> None:
    registry.upsert_node(NodeSpec.from_node(Node(id=node_id, host="10.9.0.1")))


def test_heartbeats_become_history_averaged_per_bucket(registry: PostgresRegistry) -> None:
    add(registry, "n1")
    add(registry, "n2")
    for load in (1.0, 3.0):
        assert registry.heartbeat("n1", metrics={
            "load": [load, 0, 0], "cpu_busy": 0.5, "mem_total": 1000, "mem_available": 250,
            "disk_total": 100, "disk_free": 10, "gpu": GPU})
    history = registry.metric_history(["n1", "n2"], seconds=3600, points=1)
    assert set(history) == {"n1"}  # n2 never sent a heartbeat
    (sample,) = history["n1"]
    assert sample.load1 == pytest.approx(2.0)
    assert sample.mem_used_fraction == pytest.approx(0.75)
    assert sample.disk_used_fraction == pytest.approx(0.9)
    assert sample.gpu_util == pytest.approx((40.0, 80.0))
    assert sample.gpu_mem_used == pytest.approx((1000.0, 3000.0))
    fine = registry.metric_history(["n1"], seconds=3600, points=3600)["n1"]
    assert [s.load1 for s in fine] in ([1.0, 3.0], [2.0])  # two buckets, or one second


def test_hostile_values_are_stored_as_nothing(registry: PostgresRegistry) -> None:
    add(registry, "n1")
    assert registry.heartbeat("n1", metrics={
        "load": [1e300, 0, 0], "cpu_busy": 7, "mem_total": -5, "disk_free": 10 ** 400,
        "mem_available": "<b>x</b>",
        "disk_total": True, "gpu": {"gpus": [{"utilization_pct": 1e9}, "x"] * 100},
        "jobs_running": -1})
    (sample,) = registry.metric_history(["n1"], seconds=60, points=1)["n1"]
    assert (sample.load1, sample.cpu_busy, sample.mem_total, sample.mem_available,
            sample.disk_total, sample.disk_free, sample.jobs_running) == (None,) * 7
    # The first 64 entries are read (32 of them GPUs), each value checked.
    assert sample.gpu_util == (None,) * 32
    assert not any(isinstance(v, float) and math.isnan(v) for v in sample.gpu_util)


def test_a_node_role_writes_only_its_own_history(registry: PostgresRegistry) -> None:
    add(registry, "n1")
    add(registry, "n2")
    dsn = registry.issue_credentials("n1")
    with PostgresRegistry(dsn, defaults=registry._defaults, connect_timeout=5) as own:
        assert own.heartbeat("n1", metrics={"load": [1.0, 0, 0]})
        assert not own.heartbeat("n2", metrics={"load": [9.0, 0, 0]})  # RLS: not its row
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO node_metrics (node_id, load1) VALUES ('n2', 9)")
        conn.execute("DELETE FROM node_metrics WHERE node_id = 'n2'")  # sees none: no-op
        assert conn.execute("SELECT count(*) FROM node_metrics").fetchone() == (1,)
    history = registry.metric_history(["n1", "n2"], seconds=60, points=1)
    assert set(history) == {"n1"}
    assert history["n1"][0].load1 == 1.0
