"""`skeleton web`'s API against a real PostgreSQL: the node table from the heartbeats (hostile
values become null or plain text), the history as chart columns, the journal's runs under
`runs list --json`'s keys, the jobs queue, and a registry that goes down and comes back while
the server runs. The daemons, the log pane and the browser: test_web_e2e.py."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from skeleton_app.app.views.runs import RUN_KEYS
from skeleton_app.config import Settings, load_config
from skeleton_app.engines import DEFAULT_ENGINES
from skeleton_app.nodes import Node
from skeleton_app.registry import NodeSpec, PostgresRegistry, init_schema
from skeleton_app.registry.job_records import JobSpec
from skeleton_app.registry.jobs import PostgresJobStore
from skeleton_app.results import ClusterResult, NodeResult
from skeleton_app.testing import localdb
from skeleton_app.testing.localdb import LocalPostgres
from skeleton_app.web import WebServer
from skeleton_app.web.auth import Access
from tests.support.db_fixtures import TEST_DEFAULTS

HOSTILE = "<script>alert(1)</script>"
GPU = {"state": "ok", "gpus": [
    {"index": 0, "name": HOSTILE, "utilization_pct": 40, "memory_used_mib": 1000,
     "memory_total_mib": 8000},
    {"index": 1, "name": "A100", "utilization_pct": 80, "memory_used_mib": 3000,
     "memory_total_mib": 8000},
]}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    path = tmp_path / "config.yaml"
    path.write_text("nodes: []\n")
    return load_config(path, env={})


@contextmanager
def running(settings: Settings, registry: PostgresRegistry,
            jobs: PostgresJobStore | None = None) -> Iterator[WebServer]:
    server = WebServer(settings, bind="127.0.0.1", port=0, access=Access.for_bind(
        "127.0.0.1", None), registry=registry, jobs=jobs, follow=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10)


def get(server: WebServer, path: str) -> tuple[int, bytes, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        return response.status, body, json.loads(body) if response.status == 200 else None
    finally:
        conn.close()


def add(registry: PostgresRegistry, node_id: str) -> None:
    registry.upsert_node(NodeSpec.from_node(Node(id=node_id, host="10.9.0.1")))


def test_nodes_history_runs_and_jobs(settings: Settings, db_dsn: str) -> None:
    with PostgresRegistry(db_dsn, defaults=TEST_DEFAULTS, connect_timeout=5) as registry, \
            PostgresJobStore(db_dsn, connect_timeout=5) as store:
        for node_id in ("n1", "n2", "n3"):
            add(registry, node_id)
        for load in (1.0, 3.0):
            registry.heartbeat("n1", metrics={
                "load": [load, 0, 0], "cpu_busy": 0.5, "mem_total": 1000,
                "mem_available": 250, "disk_total": 100, "disk_free": 10, "gpu": GPU},
                code_version=f"<img src=x onerror=alert(1)>{load}")
        registry.heartbeat("n2", metrics={
            "load": [1e300, 0, 0], "cpu_busy": 7, "mem_total": -5, "mem_available": HOSTILE,
            "gpu": {"gpus": [{"utilization_pct": float("1e9"), "name": 5}]}})
        run_id = registry.record_run("exec", {"command": HOSTILE}, ["n1"])
        registry.record_node_results(run_id, ClusterResult([NodeResult("n1", 0)],
                                                           operation="exec"))
        job = store.submit(JobSpec(engine=DEFAULT_ENGINES[1], text="hello",
                                   label=HOSTILE), [], submitted_by="tester@here",
                           max_attempts=1)
        with running(settings, registry, store) as server:
            status, raw, data = get(server, "/api/nodes")
            assert status == 200 and b"<" not in raw and b">" not in raw
            assert data["registry"] == {"state": "up", "error": None}
            nodes = {n["id"]: n for n in data["nodes"]}
            assert set(nodes) == {"n1", "n2", "n3"}
            n1 = nodes["n1"]
            assert (n1["daemon_state"], n1["load1"], n1["mem_used"], n1["disk_used"]) == (
                "running", 3.0, 0.75, 0.9)
            assert n1["code_version"] == "<img src=x onerror=alert(1)>3.0"  # text, as is
            assert [g["name"] for g in n1["gpus"]] == [HOSTILE, "A100"]
            assert [g["util"] for g in n1["gpus"]] == [40.0, 80.0]
            assert n1["seen_ago"] < 30 and n1["stale"] is False
            n2 = nodes["n2"]
            assert (n2["load1"], n2["cpu_busy"], n2["mem_used"]) == (None, None, None)
            assert n2["gpus"] == [{"name": None, "util": None, "mem_used_mib": None,
                                   "mem_total_mib": None}]
            assert nodes["n3"]["seen_ago"] is None and nodes["n3"]["stale"] is True

            for range_name in ("1h", "24h", "7d"):
                status, _, history = get(server, f"/api/history?range={range_name}")
                assert status == 200 and set(history["nodes"]) == {"n1", "n2"}
                cols = history["nodes"]["n1"]
                assert len(cols["t"]) >= 1 and len(cols["t"]) == len(cols["load1"])
                assert cols["gpus"] == 2 and cols["mem_used"][-1] == pytest.approx(0.75)
                assert cols["gpu_util"][-1] == pytest.approx(60.0)
                assert cols["gpu_mem_used"][-1] == pytest.approx(0.25)
                assert history["nodes"]["n2"]["load1"] == [None]
            status, _, history = get(server, "/api/history?range=24h&node=n2")
            assert status == 200 and set(history["nodes"]) == {"n2"}
            assert get(server, "/api/history?range=24h&node=nope")[2]["nodes"] == {}

            status, _, runs = get(server, "/api/runs")
            assert status == 200 and [tuple(r) for r in runs["runs"]] == [RUN_KEYS]
            assert runs["runs"][0]["arguments"] == {"command": HOSTILE}

            status, _, jobs = get(server, "/api/jobs")
            assert status == 200 and jobs["queue"]["state"] == "up"
            assert [(j["id"], j["state"], j["label"]) for j in jobs["jobs"]] == [
                (job.id, "queued", HOSTILE)]


def test_registry_down_is_said_and_retried(settings: Settings,
                                           make_postgres: Callable[..., LocalPostgres]) -> None:
    pg = make_postgres()
    init_schema(pg.dsn)
    with PostgresRegistry(pg.dsn, defaults=TEST_DEFAULTS, connect_timeout=3) as registry:
        add(registry, "n1")
        registry.heartbeat("n1", metrics={"load": [0.5, 0, 0]})
        with running(settings, registry) as server:
            assert get(server, "/api/nodes")[2]["registry"]["state"] == "up"
            pg.stop()
            status, _, data = get(server, "/api/nodes")
            assert status == 200 and data["registry"]["state"] == "down"
            assert f"127.0.0.1:{pg.port}" in data["registry"]["error"]
            # The last nodes read stay on the page while it is down.
            assert [n["id"] for n in data["nodes"]] == ["n1"]
            for path in ("/api/history?range=1h", "/api/runs"):
                status, _, data = get(server, path)
                assert status == 200 and data["registry"]["state"] == "down", path
            localdb.start_postgres(pg.base_dir, port=pg.port)

            def up() -> bool:
                return bool(get(server, "/api/nodes")[2]["registry"]["state"] == "up")

            deadline = 30
            while not up():
                deadline -= 1
                assert deadline > 0, "the registry never came back on the page"
                threading.Event().wait(1.0)
            assert get(server, "/api/history?range=1h")[2]["nodes"]["n1"]["load1"] == [0.5]
