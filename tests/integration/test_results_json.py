"""Every operation's result is JSON: `ClusterResult.to_json()` (what `--json` prints) works for
status, exec, deploy, daemon, sync-models and logs, typed values in `data` included.

The first test needs no host (typed values, a NodeStatus and a DaemonReply among them, in the
legacy `data` field; the typed outcomes are tested in tests/unit/test_to_json.py); the others
run each operation on the session testbed and read the JSON back."""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path
from typing import Any

from skeleton_app.cluster import Cluster
from skeleton_app.errors import NodeErrorKind
from skeleton_app.ops.daemon import daemon_control, parse_reply
from skeleton_app.ops.deploy import deploy
from skeleton_app.ops.logs import collect_logs
from skeleton_app.ops.run import exec_command
from skeleton_app.ops.status import status
from skeleton_app.ops.status_probe import parse_status
from skeleton_app.ops.sync_models import sync_models
from skeleton_app.results import ClusterResult, NodeResult
from skeleton_app.testing.testbed import Testbed
from tests.support.deploy_support import make_source, settings_of, unique_app_dir, variant


def _round_trip(result: ClusterResult) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.to_json())
    assert data["nodes"].keys() == set(result)
    return data


class _Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass(frozen=True)
class _Plain:
    path: Path
    tags: tuple[str, ...]


def test_typed_values_in_data_become_json() -> None:
    st = parse_status("probe=skeleton-status/1\nhostname=n1\ndaemon_running=1\ndaemon_pid=7\n"
                      "load=0.1 0.2 0.3\nprobe_end=1\n")
    result = ClusterResult([
        NodeResult(node="n1", exit_code=0, data={"status": st}),
        NodeResult(node="n2", exit_code=0, data={**parse_reply("state=running pid=9\n")
                                                  .as_dict(), "reply": parse_reply("state=x")}),
        NodeResult(node="n3", error_kind=NodeErrorKind.LOCAL, error="lock held",
                   data={"enum": _Color.RED, "plain": _Plain(Path("/a"), ("x",)),
                         "set": frozenset({1}), "bytes": b"hi", 3: object}),
    ], operation="mixed")
    data = _round_trip(result)
    assert data["nodes"]["n1"]["data"]["status"] == json.loads(json.dumps(st.as_dict()))
    assert data["nodes"]["n1"]["data"]["status"]["hostname"] == "n1"
    assert data["nodes"]["n2"]["data"]["pid"] == 9
    assert data["nodes"]["n2"]["data"]["reply"]["state"] == "x"
    assert data["nodes"]["n3"]["data"] == {"enum": "red", "plain": {"path": "/a", "tags": ["x"]},
                                           "set": [1], "bytes": "hi", "3": str(object)}
    assert data["exit_code"] == 1 and data["nodes"]["n3"]["error_kind"] == "local"


def test_status_to_json(testbed: Testbed, tmp_path: Path) -> None:
    with Cluster(settings_of(variant(testbed, tmp_path))) as cluster:
        result = status(cluster, cluster.select(["node-0[1-2]"]))
    data = _round_trip(result)
    assert data["nodes"]["node-01"]["data"]["status"]["hostname"] == "node-01"
    assert data["nodes"]["node-02"]["data"]["status"]["daemon_running"] is False


def test_exec_to_json(testbed: Testbed, tmp_path: Path) -> None:
    with Cluster(settings_of(variant(testbed, tmp_path))) as cluster:
        result = exec_command(cluster, "hostname", cluster.select(["node-0[1-2]"]))
    assert _round_trip(result)["nodes"]["node-02"]["stdout"] == "node-02\n"


def test_deploy_and_daemon_to_json(testbed: Testbed, tmp_path: Path) -> None:
    settings = settings_of(variant(testbed, tmp_path, app_dir=unique_app_dir("json")))
    with Cluster(settings) as cluster:
        nodes = cluster.select(["node-03"])
        deployed = deploy(cluster, nodes, source=make_source(tmp_path / "src", "A"))
        assert deployed.exit_code() == 0
        assert _round_trip(deployed)["nodes"]["node-03"]["data"]["version"]
        try:
            started = daemon_control(cluster, nodes, "start")
            data = _round_trip(started)["nodes"]["node-03"]["data"]
            assert data["state"] == "started" and isinstance(data["pid"], int)
        finally:
            stopped = daemon_control(cluster, nodes, "stop")
        assert _round_trip(stopped)["nodes"]["node-03"]["data"]["state"] == "stopped"


def test_sync_models_and_logs_to_json(testbed: Testbed, tmp_path: Path) -> None:
    settings = settings_of(variant(testbed, tmp_path, app_dir=unique_app_dir("jsonm")))
    with Cluster(settings) as cluster:
        src, dst = cluster.select(["node-04"])[0], cluster.select(["node-05"])
        prep = exec_command(cluster, f"mkdir -p {src.app_dir}/models/m && head -c 4096"
                            f" /dev/urandom > {src.app_dir}/models/m/w.bin", [src])
        assert prep.exit_code() == 0, prep.to_json()
        synced = sync_models(cluster, source_node=src, targets=dst)
        assert synced.exit_code() == 0, synced.to_json()
        assert _round_trip(synced)["nodes"]["node-05"]["data"]["models"] == ["m"]
        logs = collect_logs(cluster, dst, lines=5, out_dir=tmp_path / "logs")
        assert _round_trip(logs)["nodes"]["node-05"]["data"]["file"]
