"""Every operation's `to_json()` works and has the keys `--json` promises: status (a node with a
full report, an unreachable one), exec, daemon status/start/restart with health, bootstrap and
credentials. The operations run over the fake runner (no root, no network); bootstrap, whose
wheelhouse needs pip, is built by hand from its outcome type."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from skeleton_app import payloads
from skeleton_app.app.views.bootstrap import failures, summary_rows
from skeleton_app.app.views.daemon import daemon_text
from skeleton_app.app.views.exec import exec_text
from skeleton_app.app.views.status import rows, status_json
from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.ops import credentials as credentials_op
from skeleton_app.ops.bootstrap import BootstrapOutcome
from skeleton_app.ops.daemon import DaemonOutcome, daemon_control
from skeleton_app.ops.run import exec_command
from skeleton_app.ops.status import StatusReport, status
from skeleton_app.results import ClusterResult, NodeResult, failure
from skeleton_app.testing.fake import Call, FakeRunner, Reply

NODE_KEYS = {"node", "exit_code", "stdout", "stderr", "error_kind", "error", "duration",
             "stdout_bytes", "stderr_bytes", "truncated", "data"}
RESULT_KEYS = {"operation", "duration", "exit_code", "ok", "nonzero", "errors", "warnings",
               "nodes"}
DAEMON_KEYS = {"action", "state", "pid", "signal", "message", "log_tail", "summary"}

PROBE = """probe=skeleton-status/1
hostname=n1
daemon_manager=process
daemon_running=1
daemon_pid=4242
load=0.12 0.34 0.56
mem_total_kb=16000000
mem_available_kb=12000000
disk_path=/srv
disk_total_kb=100000000
disk_free_kb=40000000
uptime_s=12345.67
code_version=abc123def456
gpu_exit=127
probe_end=1
"""


def _cluster(runner: FakeRunner, count: int = 2) -> Cluster:
    nodes = [Node(id=f"n{i}", host=f"10.0.0.{i}") for i in range(1, count + 1)]
    return Cluster(Settings(), nodes, connector=runner)


def _json(result: ClusterResult[Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.to_json())
    assert data.keys() == RESULT_KEYS
    assert data["nodes"].keys() == set(result)
    for entry in data["nodes"].values():
        assert entry.keys() == NODE_KEYS
    return data


def _unreachable_n2(reply: Reply) -> FakeRunner:
    def handler(call: Call) -> Reply | NodeError:
        if call.node == "n2":
            return NodeError(NodeErrorKind.UNREACHABLE, "no route to host")
        return reply
    return FakeRunner(handler)


# ---- status ------------------------------------------------------------------------------------


def test_status_to_json_full_report_and_unreachable_node() -> None:
    runner = _unreachable_n2(Reply(0, stdout=PROBE))
    with _cluster(runner) as cluster:
        nodes = cluster.select()
        result = status(cluster, nodes)
    report = result["n1"].outcome
    assert isinstance(report, StatusReport) and report.status is not None
    assert report.status.daemon_pid == 4242 and report.status.complete
    assert result["n2"].outcome is None
    # What was sent: `sh -s -- ARGS` with the probe, prelude included, on stdin.
    call = runner.calls[0]
    assert call.command.startswith("sh -s -- ")
    assert call.stdin == payloads.data("status.sh")

    data = _json(result)
    assert data["exit_code"] == 4 and data["errors"] == ["n2"]
    n1 = data["nodes"]["n1"]["data"]
    assert n1.keys() == {"status", "registry"} and n1["registry"] is None
    assert n1["status"]["hostname"] == "n1" and n1["status"]["daemon_running"] is True
    assert n1["status"]["load"] == [0.12, 0.34, 0.56]
    assert n1["status"]["mem_total"] == 16000000 * 1024
    assert n1["status"]["gpu"]["state"] == "none"
    assert data["nodes"]["n2"]["error_kind"] == "unreachable"

    # --json of `cluster status`: every node has status and registry, unreachable ones too.
    cli = json.loads(status_json(result, {"n1": {"last_seen": 1.5, "code_version": "x"}}))
    assert cli["nodes"]["n1"]["data"]["registry"] == {"last_seen": 1.5, "code_version": "x"}
    assert cli["nodes"]["n1"]["data"]["status"] == n1["status"]
    assert cli["nodes"]["n2"]["data"] == {"status": None, "registry": None}
    assert json.loads(status_json(result))["nodes"]["n2"]["data"] == {"status": None,
                                                                      "registry": None}
    # The table reads the same typed report.
    columns, table = rows(result, nodes)
    assert columns[:3] == ["node", "host", "daemon"]
    assert table[0][2] == "✓" and table[0][4] == "3.8/15GiB"
    assert table[1][2] == "✗" and "unreachable" in table[1][3]


# ---- exec --------------------------------------------------------------------------------------


def test_exec_to_json_and_text() -> None:
    import io

    runner = _unreachable_n2(Reply(0, stdout="hello\n"))
    with _cluster(runner, 3) as cluster:
        result = exec_command(cluster, "echo hello", cluster.select())
    data = _json(result)
    assert data["nodes"]["n1"]["stdout"] == "hello\n" and data["nodes"]["n1"]["data"] == {}
    assert data["nodes"]["n2"]["error_kind"] == "unreachable"
    out = io.StringIO()
    exec_text(result, out)
    assert "---------------- n[1,3] ----------------\nhello\n" in out.getvalue()
    assert "n2: unreachable: no route to host" in out.getvalue()


# ---- daemon ------------------------------------------------------------------------------------


def test_daemon_status_and_start_to_json() -> None:
    import io

    runner = _unreachable_n2(Reply(0, stdout="state=running pid=77\n"))
    with _cluster(runner) as cluster:
        nodes = cluster.select()
        result = daemon_control(cluster, nodes, "status")
    outcome = result["n1"].outcome
    assert isinstance(outcome, DaemonOutcome)
    assert (outcome.state, outcome.pid, outcome.summary) == ("running", 77, "running (pid 77)")
    call = runner.calls[0]
    assert call.command.startswith("sh -s -- status ")
    assert call.stdin == payloads.data("daemon.sh")
    data = _json(result)
    assert data["nodes"]["n1"]["data"] == {"action": "status", "state": "running", "pid": 77,
                                           "signal": None, "message": None, "log_tail": [],
                                           "summary": "running (pid 77)"}
    assert data["nodes"]["n2"]["data"] == {}

    died = ("state=died pid=9\nmessage=the daemon exited within 1 s; the last lines:\n"
            "--- begin log_tail\nTraceback\nmissing model x.bin\n--- end log_tail\n")
    with _cluster(FakeRunner(lambda _call: Reply(1, stdout=died)), 1) as cluster:
        started = daemon_control(cluster, cluster.select(), "start")
    data = _json(started)
    assert data["nodes"]["n1"]["data"].keys() == DAEMON_KEYS
    assert data["nodes"]["n1"]["data"]["log_tail"] == ["Traceback", "missing model x.bin"]
    assert data["exit_code"] == 1
    out = io.StringIO()
    daemon_text(started, cluster.nodes, out)
    assert "died at start (pid 9)" in out.getvalue() and "| missing model x.bin" in out.getvalue()


def test_daemon_restart_with_health_to_json() -> None:
    def handler(call: Call) -> Reply:
        if call.stdin == payloads.data("health.sh"):
            return Reply(0, stdout='state=healthy url=http://127.0.0.1:8765/health\n'
                                   '--- begin body\n{"pid": 88, "node": "n1"}\n--- end body\n')
        if " stop " in call.command:
            return Reply(0, stdout="state=stopped pid=77 signal=TERM\n")
        return Reply(0, stdout="state=started pid=88\n")

    with _cluster(FakeRunner(handler), 1) as cluster:
        result = daemon_control(cluster, cluster.select(), "restart", wait_healthy=True)
    outcome = result["n1"].outcome
    assert outcome is not None and outcome.healthy is True and outcome.stopped_pid == 77
    data = _json(result)["nodes"]["n1"]["data"]
    assert data.keys() == DAEMON_KEYS | {"stopped_pid", "healthy", "health"}
    assert data["health"] == {"pid": 88, "node": "n1"} and data["pid"] == 88
    assert data["summary"] == "stopped (pid 77), then started (pid 88); healthy"


# ---- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_to_json_from_its_outcomes() -> None:
    result: ClusterResult[BootstrapOutcome] = ClusterResult([
        NodeResult(node="n1", exit_code=0, duration=1.25,
                   outcome=BootstrapOutcome("up-to-date", "3.11.2", "d" * 64)),
        NodeResult(node="n2", exit_code=1, stderr="Python 3.8.10 is too old\n",
                   outcome=BootstrapOutcome("failed", "3.8.10", "d" * 64,
                                            "Python 3.8.10 is too old")),
        failure("n3", NodeErrorKind.UNREACHABLE, "no route to host"),
    ], operation="bootstrap")
    data = _json(result)
    assert data["nodes"]["n1"]["data"] == {"state": "up-to-date", "python": "3.11.2",
                                           "digest": "d" * 64, "message": ""}
    assert data["nodes"]["n2"]["data"]["message"] == "Python 3.8.10 is too old"
    assert data["nodes"]["n3"]["data"] == {}
    assert summary_rows(result) == [
        ["n1", "up to date", "3.11.2", "1.2s", "-"],
        ["n2", "failed", "3.8.10", "0.0s", "Python 3.8.10 is too old"],
        ["n3", "failed", "-", "0.0s", "unreachable: no route to host"]]
    assert list(failures(result)) == ["n2: Python 3.8.10 is too old",
                                      "n3: unreachable: no route to host"]


# ---- credentials -------------------------------------------------------------------------------


class _Registry:
    def issue_credentials(self, node_id: str) -> str:
        return f"postgresql://{node_id}:secret@db/skeleton"


@contextmanager
def _open_registry(_settings: Settings) -> Iterator[_Registry]:
    yield _Registry()


def test_credentials_to_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(credentials_op, "open_registry", _open_registry)
    runner = FakeRunner(lambda _call: Reply(0))
    with _cluster(runner, 1) as cluster:
        r = credentials_op.install_credentials(cluster, cluster.nodes[0])
    assert runner.calls[0].stdin == b"postgresql://n1:secret@db/skeleton\n"
    assert "secret" not in runner.calls[0].command
    result = ClusterResult([r], operation="credentials")
    data = _json(result)["nodes"]["n1"]
    assert data["data"] == {"path": "~/.config/skeleton/node.dsn", "written": True}
    assert "secret" not in result.to_json()
