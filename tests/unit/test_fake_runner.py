"""The fake runner drives a real operation: `ops.run` over it gives the same typed results and
exit codes as over SSH, with no network."""

from __future__ import annotations

from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.errors import ExitCode, NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.testing.fake import Call, FakeRunner, Reply


def _cluster(runner: FakeRunner) -> Cluster:
    nodes = [Node(id=f"n{i}", host=f"10.0.0.{i}") for i in (1, 2, 3)]
    return Cluster(Settings(), nodes, connector=runner)


def test_each_node_answers_through_the_handler_and_one_failure_hides_no_other() -> None:
    def handler(call: Call) -> Reply | NodeError:
        if call.node == "n2":
            return NodeError(NodeErrorKind.UNREACHABLE, "no route to host")
        if call.node == "n3":
            return Reply(3, stderr="boom\n")
        return Reply(0, stdout=f"{call.command} on {call.node}\n")

    runner = FakeRunner(handler)
    with _cluster(runner) as cluster:
        result = cluster.run("uname -r")
    assert result["n1"].stdout == "uname -r on n1\n"
    assert result["n2"].error_kind == NodeErrorKind.UNREACHABLE
    assert result["n3"].exit_code == 3
    assert set(result.ok) == {"n1"} and set(result.nonzero) == {"n3"}
    assert set(result.errors) == {"n2"}
    assert result.exit_code() == ExitCode.UNREACHABLE  # unreachable wins over failed
    assert runner.commands("n1") == ["uname -r"]
    assert runner.closed  # the cluster closes its connector
