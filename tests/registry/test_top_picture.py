"""The cluster picture (ops/picture.py) read from a real PostgreSQL: the latest heartbeat and
its history per node, hostile heartbeat values as None, running jobs from the queue, a node
without a valid row, and a registry that goes down and comes back (the picture says so and
never raises)."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from skeleton_app.engines import DEFAULT_ENGINES
from skeleton_app.nodes import Node
from skeleton_app.ops.picture import queue_counter, registry_picture
from skeleton_app.registry import NodeSpec, PostgresRegistry, init_schema
from skeleton_app.registry.job_records import Job, JobSpec, Load, Route
from skeleton_app.registry.jobs import PostgresJobStore
from skeleton_app.testing import localdb
from skeleton_app.testing.localdb import LocalPostgres
from tests.support.db_fixtures import TEST_DEFAULTS

GPU = {"state": "ok", "gpus": [
    {"index": 0, "utilization_pct": 40, "memory_used_mib": 1000, "memory_total_mib": 8000},
    {"index": 1, "utilization_pct": 80, "memory_used_mib": 3000, "memory_total_mib": 8000},
]}
HEALTHY = {"load": [1.5, 1, 1], "cpu_busy": 0.25, "mem_total": 1000, "mem_available": 250,
           "disk_total": 100, "disk_free": 40, "gpu": GPU}
HOSTILE = {"load": ["[red]9", 0, 0], "cpu_busy": 7, "mem_total": 10**30,
           "mem_available": "\x1b[2J", "disk_total": -1, "disk_free": True,
           "gpu": {"gpus": [{"utilization_pct": 1e300, "memory_used_mib": "x"}]},
           "jobs_running": "[bold]7"}

NODES = [Node(id=i, host="10.9.0.1") for i in ("n1", "n2", "n3")]


def add(registry: PostgresRegistry, *nodes: Node) -> None:
    for node in nodes:
        registry.upsert_node(NodeSpec.from_node(node))


def test_the_picture_holds_latest_values_history_and_daemon_facts(
        registry: PostgresRegistry) -> None:
    add(registry, *NODES)
    for load in (1.0, 2.0, 1.5):
        assert registry.heartbeat("n1", metrics={**HEALTHY, "load": [load, 0, 0]},
                                  code_version="abc123", daemon_pid=42)
    assert registry.heartbeat("n2", metrics=HOSTILE)
    picture = registry_picture(registry, NODES, stale_after=30)
    assert picture.source == "registry" and picture.problem is None
    n1, n2, n3 = picture.nodes
    assert (n1.id, n1.daemon, n1.code_version, n1.stale) == ("n1", "running", "abc123", False)
    assert n1.heartbeat_age is not None and 0 <= n1.heartbeat_age < 30
    assert n1.latest is not None and n1.latest.load1 == 1.5
    assert n1.latest.mem_used_fraction == pytest.approx(0.75)
    assert n1.latest.disk_used_fraction == pytest.approx(0.6)
    assert n1.gpu_util == pytest.approx(60.0) and n1.gpu_mem_fraction == pytest.approx(0.25)
    assert n1.load_history and n1.load_history[-1] is not None
    assert n1.jobs_running is None  # no queue asked, no count in the heartbeat
    # A hostile heartbeat: every value it lies about is unknown, nothing else.
    assert n2.latest is not None
    assert (n2.latest.load1, n2.latest.cpu_busy, n2.latest.mem_total, n2.latest.mem_available,
            n2.latest.disk_total, n2.latest.disk_free, n2.jobs_running) == (None,) * 7
    assert n2.latest.gpu_util == (None,) and n2.gpu_util is None
    # No heartbeat ever: a row with nothing known, and the stalest of all.
    assert (n3.daemon, n3.heartbeat_age, n3.latest, n3.history, n3.stale) == (
        None, None, None, (), True)
    data = picture.as_dict()
    assert [n["id"] for n in data["nodes"]] == ["n1", "n2", "n3"]


def test_a_selected_node_without_a_row_says_so(registry: PostgresRegistry) -> None:
    add(registry, NODES[0])
    picture = registry_picture(registry, NODES[:2])
    assert picture.nodes[1].error == "no valid registry row"


def test_running_jobs_come_from_the_queue(db_dsn: str, registry: PostgresRegistry) -> None:
    add(registry, *NODES)
    stt = DEFAULT_ENGINES[0]

    def to_n2(_job: Job, _load: Load) -> Route:
        return Route(node_id="n2", reason={"policy": "test"})

    with PostgresJobStore(db_dsn, connect_timeout=5) as store:
        for name in ("a.wav", "b.wav", "c.wav"):
            store.submit(JobSpec(engine=stt, input_name=name, label=name),
                         [(name, b"RIFF....WAVE")], submitted_by="t@here", max_attempts=1)
        assert len(store.claim_many("d1", lease=60, route=to_n2, most=2)) == 2
        count = queue_counter(lambda: store)
        assert count() == {"n2": 2}
        picture = registry_picture(registry, NODES, jobs=count)
    assert [n.jobs_running for n in picture.nodes] == [0, 2, 0]


def test_a_queue_that_cannot_be_read_counts_nothing() -> None:
    count = queue_counter(lambda: PostgresJobStore("host=127.0.0.1 port=1 dbname=x",
                                                   connect_timeout=1))
    assert count() is None


def test_registry_down_is_a_problem_in_the_picture_then_it_recovers(
        make_postgres: Callable[..., LocalPostgres]) -> None:
    pg = make_postgres()
    init_schema(pg.dsn)
    with PostgresRegistry(pg.dsn, defaults=TEST_DEFAULTS, connect_timeout=2) as registry:
        add(registry, *NODES)
        assert registry.heartbeat("n1", metrics=HEALTHY)
        assert registry_picture(registry, NODES).problem is None
        pg.stop()
        down = registry_picture(registry, NODES)
        assert down.problem is not None and down.problem.startswith("registry down, retrying")
        assert f"127.0.0.1:{pg.port}" in down.problem
        assert [n.id for n in down.nodes] == ["n1", "n2", "n3"]
        assert all(n.latest is None for n in down.nodes)
        localdb.start_postgres(pg.base_dir, port=pg.port)
        back = registry_picture(registry, NODES)
        assert back.problem is None and back.nodes[0].latest is not None


def test_a_row_written_by_anything_else_never_stops_the_picture(
        db_dsn: str, registry: PostgresRegistry) -> None:
    add(registry, *NODES[:2])
    assert registry.heartbeat("n2", metrics=HEALTHY)
    # jsonb keeps integers of any size; Python's float does not.
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("UPDATE nodes SET metrics = %s::jsonb, last_seen = now()"
                     " WHERE id = 'n1'", ('{"load": [1' + "0" * 400 + ']}',))
    n1, n2 = registry_picture(registry, NODES[:2]).nodes
    assert n1.latest is not None and n1.latest.load1 is None
    assert n2.latest is not None and n2.latest.load1 == 1.5
