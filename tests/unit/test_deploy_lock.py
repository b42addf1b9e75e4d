"""The deploy lock conversation (ops/deploy/lock.py) driven by scripted reply lines, and
deploy() over the fake runner up to the point where rsync would start: no network, no root."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.errors import ExitCode, NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.ops.deploy import DeployOutcome, Transfer, deploy, digest_lines, plan
from skeleton_app.ops.deploy.lock import (
    Busy,
    Conversation,
    HelperExited,
    HelperFailed,
    HelperProtocolError,
    HelperTalk,
    Locked,
    drive,
    replay,
)
from skeleton_app.results import ClusterResult, NodeResult, failure
from skeleton_app.testing.fake import FakeRunner, FakeSession
from skeleton_app.transfers import FileChange
from skeleton_app.transfers.tree import TreeDigest

TALK = HelperTalk("n1", lock_wait=0.5, timeout=30)
TREE = TreeDigest(hex="ab" * 32, files=3, bytes=120)


def _digest_header(tree: TreeDigest, *, delete: bool = False) -> list[str]:
    lines = digest_lines(tree, delete=delete, owner="alice@laptop", source="/src")
    return ["state=locked", *(f"digest={line}" for line in lines), "ready"]


# ------------------------------------------------------------------ the conversation


def test_lock_granted_digest_compared_then_commit() -> None:
    older = TreeDigest(hex="cd" * 32, files=2, bytes=80)
    granted = replay(TALK.acquire(), _digest_header(older))
    assert isinstance(granted, Locked)
    assert granted.previous.version == older.version
    assert granted.previous.deployed_by == "alice@laptop"
    assert not granted.previous.covers(TREE, delete=False)  # another tree: deploy it
    assert granted.previous.covers(older, delete=False)  # the same tree: nothing to do
    assert not granted.previous.covers(older, delete=True)  # --delete was never applied

    sent: list[str] = []
    assert replay(TALK.begin(), ["ok"], sent) is None
    lines = digest_lines(TREE, delete=False, owner="bob@ci", source="/src")
    assert replay(TALK.commit(lines), ["ok"], sent) is None
    assert sent == ["begin", "commit", *lines, "."]


def test_a_fresh_node_has_no_previous_digest() -> None:
    granted = replay(TALK.acquire(), ["state=locked", "ready"])
    assert isinstance(granted, Locked) and granted.previous.version is None
    assert not granted.previous.covers(TREE, delete=False)


def test_lock_held_by_someone_else_names_the_holder() -> None:
    busy = replay(TALK.acquire(), ["state=busy", "owner=alice@laptop since=2026-12-06T13:00:00Z"])
    assert busy == Busy("alice@laptop since 2026-12-06T13:00:00Z")
    # An owner file that says nothing useful still gives a refusal, not a crash.
    assert replay(TALK.acquire(), ["state=busy"]) == Busy("another deploy")


def test_begin_refusals_are_the_helpers_reasons() -> None:
    assert replay(TALK.begin(), ["error=rsync-missing"]) == "rsync-missing"
    assert replay(TALK.begin(), ["error=writer-busy"]) == "writer-busy"
    assert replay(TALK.commit(["v"]), ["error=cannot write /x"]) == "error=cannot write /x"


def test_the_helper_failing_to_lock_says_why() -> None:
    failed = replay(TALK.acquire(), ["state=error", "message=flock (util-linux) is not"
                                     " installed on this node"])
    assert failed == HelperFailed("flock (util-linux) is not installed on this node")
    # Exited without a word: the driver adds its stderr.
    assert replay(TALK.acquire(), []) == HelperFailed(None)


def test_the_helper_exiting_early_is_a_lost_node() -> None:
    with pytest.raises(HelperExited) as caught:
        replay(TALK.begin(), [])
    assert caught.value.kind is NodeErrorKind.LOST and caught.value.node == "n1"
    assert "exited early" in caught.value.message
    with pytest.raises(HelperExited):
        replay(TALK.commit(["v"]), [None])


@pytest.mark.parametrize(("talk", "replies", "named"), [
    (TALK.acquire, ["Welcome to node-01!", "ready"], "Welcome to node-01!"),
    (TALK.acquire, ["state=maybe", "ready"], "state=maybe"),
    (TALK.acquire, ["ready"], "ready"),
    (TALK.begin, ["OK!"], "OK!"),
    (TALK.own, ["\x1b[31mgarbage"], "\x1b[31mgarbage"),
])
def test_a_reply_outside_the_protocol_is_a_clear_protocol_error(
        talk: Callable[[], Conversation[object]], replies: list[str], named: str) -> None:
    with pytest.raises(HelperProtocolError) as caught:
        replay(talk(), replies)
    assert caught.value.kind is NodeErrorKind.LOCAL  # the node answered: exit 1, not 4
    assert "unexpected reply" in caught.value.message and repr(named) in caught.value.message


def test_commit_garbage_says_so_rather_than_claiming_success() -> None:
    problem = replay(TALK.commit(["v"]), ["what?"])
    assert problem is not None and "unexpected reply 'what?'" in problem


def test_drive_runs_the_same_conversation_over_a_session() -> None:
    session = FakeSession(Node(id="n1", host="10.0.0.1"), [*_digest_header(TREE), "ok"])
    granted = drive(TALK.acquire(), session)
    assert isinstance(granted, Locked) and granted.previous.covers(TREE, delete=False)
    assert drive(TALK.own(), session) is None
    assert session.sent == ["own"]
    with pytest.raises(HelperExited) as caught:
        drive(TALK.begin(), session)  # no more lines: the helper is gone
    assert caught.value.kind is NodeErrorKind.LOST and caught.value.node == "n1"


# ------------------------------------------------------------------ deploy() over the fake


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "app").mkdir(parents=True)
    (src / "app/main.py").write_text("VERSION = 'A'\n")
    return src


def _cluster(runner: FakeRunner, ids: tuple[str, ...] = ("n1", "n2", "n3", "n4")) -> Cluster:
    nodes = [Node(id=i, host=f"10.0.0.{n}") for n, i in enumerate(ids, 1)]
    return Cluster(Settings(), nodes, connector=runner)


def test_refused_nodes_fail_with_exit_1_and_an_unchanged_one_is_ok(tmp_path: Path) -> None:
    src = _source(tmp_path)
    with _cluster(FakeRunner()) as probe:
        tree = plan(probe, source=src).digest
    assert tree is not None
    runner = FakeRunner(sessions={
        "n1": _digest_header(tree),  # already deployed: nothing to send
        "n2": ["state=busy", "owner=alice@laptop since=2026-12-06T13:00:00Z"],
        "n3": ["state=locked", "ready", "error=rsync-missing"],
        "n4": ["state=locked", "ready"],  # the helper dies when asked to begin
    })
    with _cluster(runner) as cluster:
        result = deploy(cluster, cluster.nodes, source=src)
    up_to_date = result["n1"].outcome
    assert result["n1"].ok and up_to_date is not None and up_to_date.unchanged
    assert up_to_date.version == tree.version == up_to_date.previous
    busy, missing, lost = result["n2"], result["n3"], result["n4"]
    assert busy.error_kind is NodeErrorKind.LOCAL
    assert "deploy in progress by alice@laptop since 2026-12-06T13:00:00Z" in (busy.error or "")
    assert missing.error_kind is NodeErrorKind.LOCAL
    assert "rsync is not installed on n3" in (missing.error or "")
    assert lost.error_kind is NodeErrorKind.LOST and "exited early" in (lost.error or "")
    assert result.exit_code() == ExitCode.UNREACHABLE  # the lost node: it broke
    # Without the lost node, the refusals are failed nodes (1), not unreachable ones (4).
    refused = ClusterResult([result["n1"], busy, missing], operation="deploy")
    assert refused.exit_code() == ExitCode.FAILED
    assert [c.command for c in runner.calls if c.kind == "run"] == []  # no rsync, no daemon

    data = json.loads(result.to_json())
    assert data["nodes"]["n1"]["data"] == {
        "dest": "/home/sysadmin/Programs/skeleton-app", "dry_run": False,
        "previous": tree.version, "version": tree.version, "unchanged": True, "changes": [],
        "changes_total": 0, "files_changed": 0, "bytes_sent": 0, "stats": None}
    assert data["nodes"]["n2"]["error_kind"] == "local"


def test_deploy_outcome_to_json_by_hand() -> None:
    change = FileChange(path="app/main.py", update="<", file_type="f", attrs="+++++++++",
                        size=14)
    out = DeployOutcome("/srv/app", locked=True, previous=None, version="v2", unchanged=False,
                        transfer=Transfer(changes=(change,), changes_total=1, files_changed=1,
                                          bytes_sent=99),
                        daemon_start={"state": "started", "pid": 42})
    result: ClusterResult[DeployOutcome] = ClusterResult([
        NodeResult("n1", exit_code=0, stdout="created app/main.py\n", outcome=out),
        failure("n2", NodeErrorKind.UNREACHABLE, "no route to host"),
    ], operation="deploy")
    data = json.loads(result.to_json())
    assert data["nodes"]["n1"]["data"] == {
        "dest": "/srv/app", "dry_run": False, "previous": None, "version": "v2",
        "unchanged": False,
        "changes": [{"path": "app/main.py", "kind": "created", "item": "<f+++++++++",
                     "size": 14}],
        "changes_total": 1, "files_changed": 1, "bytes_sent": 99, "stats": None,
        "daemon_start": {"state": "started", "pid": 42}}
    assert data["nodes"]["n2"]["data"] == {} and data["exit_code"] == 4
    assert result.outcomes() == {"n1": out}


def test_helper_errors_are_node_errors() -> None:
    assert issubclass(HelperExited, NodeError) and issubclass(HelperProtocolError, NodeError)
