"""A node's own role is trusted with its own history rows only (security review of #16):
rows it dates in the future or fills with huge GPU arrays must not hide the other nodes'
history from the operator's reads, nor make those reads carry the arrays."""

from __future__ import annotations

import psycopg

from skeleton_app.nodes import Node
from skeleton_app.registry import NodeSpec, PostgresRegistry


def add(registry: PostgresRegistry, node_id: str) -> None:
    registry.upsert_node(NodeSpec.from_node(Node(id=node_id, host="10.9.0.1")))


def test_a_nodes_future_rows_do_not_crowd_out_the_others(registry: PostgresRegistry) -> None:
    add(registry, "a-evil")
    add(registry, "b-good")
    assert registry.heartbeat("b-good", metrics={"load": [1.0, 0, 0]})
    dsn = registry.issue_credentials("a-evil")
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Its own rows (RLS allows them), one per future minute: a bucket each.
        conn.execute("INSERT INTO node_metrics (node_id, at, load1)"
                     " SELECT 'a-evil', now() + make_interval(mins => i), 9"
                     " FROM generate_series(1, 500) AS i")
    history = registry.metric_history(["a-evil", "b-good"], seconds=3600, points=60)
    assert "b-good" in history and history["b-good"][-1].load1 == 1.0
    assert len(history.get("a-evil", ())) <= 62


def test_huge_gpu_arrays_are_cut_in_the_query(registry: PostgresRegistry) -> None:
    add(registry, "n1")
    dsn = registry.issue_credentials("n1")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO node_metrics (node_id, load1, gpu_util, gpu_mem_used,"
                     " gpu_mem_total) SELECT 'n1', 1, a, a, a FROM"
                     " (SELECT array_agg(50::float8) AS a FROM generate_series(1, 100000)) s")
    (sample,) = registry.metric_history(["n1"], seconds=60, points=1)["n1"]
    assert len(sample.gpu_util) <= 64
