"""The rules above the transport, over the fake runner (no network, no root): fan-out order and
isolation, exit-code precedence, the three disjoint result views, cancel, JSON."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator

import pytest

from skeleton_app import cancel
from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings, SSHSettings
from skeleton_app.errors import ExitCode, NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.results import ClusterResult, NodeResult, failure
from skeleton_app.testing.fake import Call, FakeRunner, Handler, Reply, always, by_node

IDS = ("n1", "n2", "n3", "n4")


@pytest.fixture(autouse=True)
def _no_cancel_left() -> Iterator[None]:
    """The cancel token is process-wide: no test may leave it set for the next one."""
    cancel.reset()
    yield
    cancel.reset()


def _cluster(runner: FakeRunner, ids: tuple[str, ...] = IDS, *, fanout: int = 8) -> Cluster:
    nodes = [Node(id=i, host=f"10.0.0.{n}") for n, i in enumerate(ids, start=1)]
    settings = Settings(ssh=SSHSettings(fanout=fanout))
    return Cluster(settings, nodes, connector=runner)


def _run(handler: Handler, ids: tuple[str, ...] = IDS, **kw: int) -> ClusterResult[None]:
    with _cluster(FakeRunner(handler), ids, **kw) as cluster:
        return cluster.run("true")


# ------------------------------------------------------------------ fan-out


def test_results_keep_selection_order_whatever_order_nodes_finish_in() -> None:
    # n1 finishes last, n4 first: the result still lists the nodes as selected.
    delays = {"n1": 0.15, "n2": 0.1, "n3": 0.05, "n4": 0.0}
    finished: list[str] = []
    lock = threading.Lock()

    def handler(call: Call) -> Reply:
        time.sleep(delays[call.node])
        with lock:
            finished.append(call.node)
        return Reply(0)

    runner = FakeRunner(handler)
    with _cluster(runner) as cluster:
        chosen = [cluster.node(i) for i in ("n3", "n1", "n4", "n2")]
        result = cluster.run("true", chosen)
    assert list(result) == ["n3", "n1", "n4", "n2"]
    assert finished[0] == "n4" and finished[-1] == "n1"  # they did finish out of order


def test_one_nodes_exception_never_hides_another_node() -> None:
    def handler(call: Call) -> Reply:
        if call.node == "n2":
            raise RuntimeError("bug in n2's handling")
        if call.node == "n3":
            raise NodeError(NodeErrorKind.TIMEOUT, "took too long")
        return Reply(0, stdout=f"hi from {call.node}\n")

    result = _run(handler)
    assert list(result) == list(IDS)
    assert result["n1"].stdout == "hi from n1\n" and result["n4"].ok
    assert result["n2"].error_kind == NodeErrorKind.ERROR
    assert result["n2"].error == "RuntimeError: bug in n2's handling"
    assert result["n3"].error_kind == NodeErrorKind.TIMEOUT
    assert result["n3"].error == "took too long"
    assert result.exit_code() == ExitCode.UNREACHABLE


def test_fan_out_is_bounded_by_fanout() -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    def handler(call: Call) -> Reply:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return Reply(0)

    ids = tuple(f"n{i}" for i in range(1, 13))
    result = _run(handler, ids, fanout=3)
    assert len(result.ok) == 12
    assert 1 <= peak <= 3


# ------------------------------------------------------------------ exit codes

_OK = Reply(0)
_FAILED = Reply(1, stderr="no\n")
_LOCAL = NodeError(NodeErrorKind.LOCAL, "deploy lock held by someone else")
_UNREACHABLE = NodeError(NodeErrorKind.UNREACHABLE, "no route to host")
_INTERRUPTED = NodeError(NodeErrorKind.INTERRUPTED, f"{cancel.INTERRUPTED} while running")


@pytest.mark.parametrize(("answers", "expected"), [
    ((_OK, _OK, _OK, _OK), ExitCode.OK),
    ((_OK, _FAILED, _OK, _OK), ExitCode.FAILED),
    ((_OK, _LOCAL, _OK, _OK), ExitCode.FAILED),  # a precondition refusal is a failed node
    ((_LOCAL, _FAILED, _OK, _OK), ExitCode.FAILED),
    ((_OK, _FAILED, _UNREACHABLE, _LOCAL), ExitCode.UNREACHABLE),  # 4 wins over 1
    ((_UNREACHABLE, _OK, _OK, _OK), ExitCode.UNREACHABLE),
    ((_INTERRUPTED, _UNREACHABLE, _FAILED, _LOCAL), ExitCode.INTERRUPTED),  # 130 wins over all
    ((_OK, _OK, _OK, _INTERRUPTED), ExitCode.INTERRUPTED),
])
def test_exit_code_precedence(answers: tuple[Reply | NodeError, ...],
                              expected: ExitCode) -> None:
    result = _run(by_node(dict(zip(IDS, answers, strict=True))))
    assert result.exit_code() == expected
    assert int(result.exit_code()) == {ExitCode.OK: 0, ExitCode.FAILED: 1,
                                       ExitCode.UNREACHABLE: 4,
                                       ExitCode.INTERRUPTED: 130}[expected]


@pytest.mark.parametrize("kind", list(NodeErrorKind))
def test_every_error_kind_has_its_documented_exit_code(kind: NodeErrorKind) -> None:
    result = _run(by_node({"n1": NodeError(kind, "x")}, default=_OK), ("n1", "n2"))
    expected = {NodeErrorKind.LOCAL: ExitCode.FAILED,
                NodeErrorKind.INTERRUPTED: ExitCode.INTERRUPTED}.get(kind, ExitCode.UNREACHABLE)
    assert result.exit_code() == expected == kind.exit_code
    assert NodeError(kind, "x").exit_code == expected


# ------------------------------------------------------------------ views

_ANSWERS: dict[str, Reply | NodeError] = {
    "ok": _OK, "failed": _FAILED, "exit-255": Reply(255), "local": _LOCAL,
    "unreachable": _UNREACHABLE, "interrupted": _INTERRUPTED,
    "refused": NodeError(NodeErrorKind.REFUSED, "connection refused"),
}


def test_views_never_overlap_and_cover_every_node() -> None:
    ids = ("n1", "n2", "n3")
    for combo in itertools.product(_ANSWERS, repeat=len(ids)):
        result = _run(by_node({i: _ANSWERS[a] for i, a in zip(ids, combo, strict=True)}), ids)
        ok, nonzero, errors = set(result.ok), set(result.nonzero), set(result.errors)
        assert not ok & nonzero and not ok & errors and not nonzero & errors, combo
        assert ok | nonzero | errors == set(ids), combo
        assert set(result.interrupted) <= errors, combo
        for node, answer in zip(ids, combo, strict=True):
            view = {"ok": ok, "failed": nonzero, "exit-255": nonzero}.get(answer, errors)
            assert node in view, (combo, node)


def test_views_are_fresh_values_not_a_shared_cache() -> None:
    result = _run(always(_OK), ("n1", "n2"))
    view = result.ok
    assert isinstance(view, dict)
    view.clear()  # a caller scribbling on its copy
    assert set(result.ok) == {"n1", "n2"}
    with pytest.raises(TypeError):
        result._results["n1"] = failure("n1", NodeErrorKind.ERROR, "x")  # type: ignore[index]


# ------------------------------------------------------------------ cancel


def test_a_cancel_before_start_marks_every_node_interrupted_and_runs_nothing() -> None:
    runner = FakeRunner(always(_OK))
    cancel.cancel()
    with _cluster(runner) as cluster:
        result = cluster.run("sleep 10")
    assert runner.calls == []
    assert set(result.interrupted) == set(IDS) == set(result.errors)
    assert all(r.error and r.error.startswith(cancel.INTERRUPTED) for r in result.values())
    assert result.exit_code() == ExitCode.INTERRUPTED


def test_a_cancel_mid_run_keeps_finished_nodes_and_starts_no_other() -> None:
    def handler(call: Call) -> Reply:
        if call.node == "n2":
            cancel.cancel()  # Ctrl-C while n2 runs; n2 itself still finishes
        return Reply(0, stdout=call.node)

    runner = FakeRunner(handler)
    with _cluster(runner, fanout=1) as cluster:
        result = cluster.run("true")
    assert [c.node for c in runner.calls] == ["n1", "n2"]
    assert set(result.ok) == {"n1", "n2"}
    assert set(result.interrupted) == {"n3", "n4"}
    assert list(result) == list(IDS)
    assert result.exit_code() == ExitCode.INTERRUPTED


# ------------------------------------------------------------------ JSON


def test_to_json_of_a_plain_exec_result() -> None:
    result = _run(by_node({"n1": Reply(0, stdout="héllo\n"), "n2": Reply(2, stderr="bad\n"),
                           "n3": _UNREACHABLE}), ("n1", "n2", "n3"))
    data = json.loads(result.to_json())
    assert data["operation"] == "exec"
    assert data["exit_code"] == 4
    assert (data["ok"], data["nonzero"], data["errors"]) == (["n1"], ["n2"], ["n3"])
    assert data["warnings"] == []
    assert list(data["nodes"]) == ["n1", "n2", "n3"]
    n1, n2, n3 = (data["nodes"][i] for i in ("n1", "n2", "n3"))
    assert n1["stdout"] == "héllo\n" and n1["exit_code"] == 0 and n1["error_kind"] is None
    assert n1["stdout_bytes"] == len("héllo\n".encode())
    assert n2["exit_code"] == 2 and n2["stderr"] == "bad\n"
    assert n3["exit_code"] is None and n3["error_kind"] == "unreachable"
    assert n3["error"] == "no route to host"
    assert all(n["data"] == {} for n in data["nodes"].values())
    assert set(n1) == {"node", "exit_code", "stdout", "stderr", "error_kind", "error",
                       "duration", "stdout_bytes", "stderr_bytes", "truncated", "data"}


def test_a_scripted_node_result_is_used_as_is() -> None:
    scripted: NodeResult[None] = NodeResult(node="whatever", exit_code=0, stdout="a" * 10,
                                            stdout_bytes=4096, truncated=True, duration=1.5)
    result = _run(by_node({"n1": scripted}, default=_OK), ("n1", "n2"))
    r = result["n1"]
    assert r.node == "n1"  # filed under the node that was asked
    assert (r.stdout_bytes, r.truncated, r.duration) == (4096, True, 1.5)
