"""The registry end to end on a testbed with PostgreSQL: daemons started through
`cluster daemon start` register and heartbeat, `nodes list` and `cluster status` show them,
a stopped daemon is marked stopped, and every operation is journaled."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import skeleton


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def nodes_json(config: object) -> dict[str, dict[str, object]]:
    proc = skeleton("nodes", "list", "--json", config=config)  # type: ignore[arg-type]
    assert proc.returncode == 0, proc.stderr
    return {n["id"]: n for n in json.loads(proc.stdout)}


def test_daemons_register_heartbeat_and_stop(make_testbed: Callable[..., Testbed]) -> None:
    bed = make_testbed(3, db=True)
    cfg = bed.config_path
    # the testbed registered its hosts: commands work before any daemon ran
    assert set(nodes_json(cfg)) == {"node-01", "node-02", "node-03"}
    # The hosts are stock nodes: their .venv comes first, as a user makes it.
    proc = skeleton("cluster", "bootstrap", config=cfg, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = skeleton("cluster", "daemon", "start", config=cfg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    try:
        assert wait_for(lambda: all(
            n["daemon_state"] == "running" and n["seen_ago"] is not None and n["seen_ago"] < 15
            for n in nodes_json(cfg).values())), nodes_json(cfg)
        status = skeleton("cluster", "status", "--json", config=cfg)
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)["nodes"]
        for node_id in ("node-01", "node-02", "node-03"):
            assert data[node_id]["data"]["status"]["daemon_running"] is True
            assert data[node_id]["data"]["registry"]["daemon_state"] == "running"
        table = skeleton("cluster", "status", config=cfg)
        assert "ago" in table.stdout and "(stale)" not in table.stdout

        stop = skeleton("cluster", "daemon", "stop", "--node", "node-02", config=cfg)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert wait_for(lambda: nodes_json(cfg)["node-02"]["daemon_state"] == "stopped")
        assert nodes_json(cfg)["node-01"]["daemon_state"] == "running"
    finally:
        skeleton("cluster", "daemon", "stop", config=cfg)

    runs = skeleton("runs", "list", config=cfg, env={"COLUMNS": "200"})
    assert runs.returncode == 0
    assert "status" in runs.stdout and "daemon" in runs.stdout
    show = skeleton("runs", "show", "1", config=cfg, env={"COLUMNS": "200"})
    assert show.returncode == 0 and "node-01" in show.stdout


def test_database_down_after_selection_warns_once(make_testbed: Callable[..., Testbed]) -> None:
    """Recording must not fail a command: stop PostgreSQL between selection and journal."""
    from skeleton_app.cluster import Cluster
    from skeleton_app.config import load_config
    from skeleton_app.errors import RegistryError
    from skeleton_app.ops.run import exec_command
    from skeleton_app.registry import record_result
    from skeleton_app.testing import localdb

    bed = make_testbed(2, db=True)
    settings = load_config(bed.config_path, env={})
    with Cluster.from_config(settings=settings) as cluster:
        nodes = cluster.select()
        assert bed.db is not None
        localdb.stop_postgres(bed.db.dir)
        result = exec_command(cluster, "hostname", nodes)
    assert result.exit_code() == 0 and len(result.ok) == 2
    try:
        record_result(settings, "exec", {}, [n.id for n in nodes], result)
    except RegistryError as exc:
        assert "127.0.0.1" in str(exc) or bed.gateway in str(exc)
    else:
        raise AssertionError("recording into a stopped database did not fail")


def test_unreachable_registry_exit_3_nothing_runs(make_testbed: Callable[..., Testbed]) -> None:
    from skeleton_app.testing import localdb

    bed = make_testbed(1, db=True)
    assert bed.db is not None
    localdb.stop_postgres(bed.db.dir)
    marker = bed.host("node-01").home / "ran"
    proc = skeleton("cluster", "exec", "touch ~/ran", config=bed.config_path)
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f":{bed.db.port}" in lines[0]
    assert not marker.exists()
