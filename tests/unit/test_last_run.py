"""The previous run behind `--node @failed` and `runs retry` (app.last_run, nodes.select's
`failed`, Session.select/journal, app.retry's checks), over the fake runner."""

from __future__ import annotations

import stat
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from skeleton_app.app import commands, retry
from skeleton_app.app.commands import Selection, Session
from skeleton_app.app.last_run import (
    STATE_FILE,
    NodeOutcome,
    PastRun,
    public_arguments,
    read_state,
    state_dir,
    write_state,
)
from skeleton_app.cluster import Cluster
from skeleton_app.config import load_config
from skeleton_app.errors import NodeError, NodeErrorKind, SelectionError, UsageError
from skeleton_app.nodes import Node, names_failed, select
from skeleton_app.testing.fake import Call, FakeRunner, Reply

NODES = [Node(id=f"n{i}", host=f"10.0.0.{i}", roles=("stt",) if i < 3 else ())
         for i in range(1, 5)]


def ids(nodes: tuple[Node, ...]) -> list[str]:
    return [n.id for n in nodes]


def test_select_failed_combines_and_never_widens() -> None:
    failed = ["n2", "n3"]
    assert ids(select(NODES, ["@failed"], failed=failed)) == ["n2", "n3"]
    assert ids(select(NODES, ["@failed,n4"], failed=failed)) == ["n2", "n3", "n4"]
    assert ids(select(NODES, ["@failed"], exclude=["n3"], failed=failed)) == ["n2"]
    assert ids(select(NODES, exclude=["@failed"], failed=failed)) == ["n1", "n4"]
    assert ids(select(NODES, ["@failed"], roles=["stt"], failed=failed)) == ["n2"]
    with pytest.raises(SelectionError, match="n9 failed in the last run but is no longer"):
        select(NODES, ["@failed"], failed=["n2", "n9"])
    # given the ids, @failed wins over a group of that name; without them it is a name
    assert ids(select(NODES, ["@failed"], groups={"failed": ["n1"]}, failed=["n4"])) == ["n4"]
    assert ids(select(NODES, ["@failed"], groups={"failed": ["n1"]})) == ["n1"]
    assert names_failed(["n1", "n2,@failed"]) and not names_failed(["@failedx", "n1"])


def test_state_file_round_trip_is_atomic_and_private(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert state_dir() == tmp_path / "skeleton"
    assert read_state() is None
    run = PastRun("exec", {"command": "true", "sudo_password": "hunter2"},
                  datetime(2026, 1, 2, 12, 3, tzinfo=UTC),
                  {"n1": NodeOutcome(0, None), "n2": NodeOutcome(3, None),
                   "n3": NodeOutcome(None, "unreachable")})
    path = write_state(run)
    assert path == tmp_path / "skeleton" / STATE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [STATE_FILE]  # no temp file left
    back = read_state()
    assert back is not None and back.failed == ("n2", "n3")
    assert back.outcomes == run.outcomes and back.operation == "exec"
    assert "exec at " in back.describe() and back.describe().endswith(
        ", 1 ok, 1 failed, 1 unreachable")
    path.write_text("{not json")
    with pytest.raises(UsageError, match="not a readable last-run file"):
        read_state()
    monkeypatch.setenv("XDG_STATE_HOME", "relative/dir")  # ignored, as the XDG spec says
    assert state_dir() == Path.home() / ".local" / "state" / "skeleton"


def test_secrets_are_never_recorded() -> None:
    assert public_arguments({"command": "id", "sudo_password": "x", "password": "y",
                             "token": "z", "api_secret": "w", "timeout": 3}) == {
        "command": "id", "timeout": 3}


def mixed(call: Call) -> Reply | NodeError:
    if call.node == "n3":
        return NodeError(NodeErrorKind.UNREACHABLE, "no route to host")
    return Reply(3 if call.node == "n2" else 0)


def session_over(tmp_path: Path, runner: FakeRunner) -> Session:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("nodes:\n" + "".join(
        f"  - {{id: {n.id}, host: {n.host}}}\n" for n in NODES))
    settings = load_config(str(cfg))
    return Session(cluster=Cluster.from_config(settings=settings, connector=runner),
                   warn=lambda _line: None)


def test_session_journals_then_selects_and_retries_the_failures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    runner = FakeRunner(mixed)
    with session_over(tmp_path, runner) as session:
        with pytest.raises(UsageError, match="no previous run recorded"):
            session.select(Selection(["@failed"]))
        done = commands.exec_command(session, session.select(Selection()), "uptime")
        assert done.exit_code == 4
        assert ids(session.select(Selection(["@failed"]))) == ["n2", "n3"]
        plan = retry.plan(session, "last")
        assert ids(plan.nodes) == ["n2", "n3"] and plan.operation == "exec"
        runner.calls.clear()
        again = retry.run(session, plan)
        assert sorted(c.node for c in runner.calls) == ["n2", "n3"]
        assert again.exit_code == 4
        with pytest.raises(UsageError, match="run ids need a registry"):
            retry.plan(session, "1")
        commands.exec_command(session, NODES[:1], "true")
        with pytest.raises(UsageError, match=r"no failed nodes in the last run \(exec at "):
            session.select(Selection(["@failed"]))


def test_retry_of_exec_sudo_runs_under_sudo_and_a_stdin_run_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`runs retry` of `exec --sudo` ran the command without sudo (as the login user); of
    `exec --stdin`, with an empty stdin. The first keeps sudo, the second exits 2."""
    from skeleton_app.ops.sudo import SudoRequest

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    def node(call: Call) -> Reply:
        if call.command.startswith("LC_ALL=C sudo -n"):
            return Reply(0)  # NOPASSWD: no password is asked
        return Reply(0 if call.node == "n1" else 1)

    runner = FakeRunner(node)
    with session_over(tmp_path, runner) as session:
        asked: list[list[str]] = []

        def password(nodes: Sequence[str]) -> str:
            asked.append(list(nodes))
            return "pw"

        request = SudoRequest(password, user="postgres")
        commands.exec_command(session, NODES[:2], "id -un", sudo=request)
        runner.calls.clear()
        again = retry.run(session, retry.plan(session, "last"))
        assert [c.node for c in runner.calls] == ["n2", "n2"]
        assert runner.calls[-1].command == "sudo -n -u postgres -- sh -c 'id -un'"
        assert again.exit_code == 1 and asked == []

        commands.exec_command(session, NODES[:2], "tar x -C /srv", stdin=b"12345")
        runner.calls.clear()
        with pytest.raises(UsageError, match=r"sent 5 bytes of --stdin, which are not recorded"):
            retry.plan(session, "last")
        assert runner.calls == []


def test_copy_and_fetch_runs_are_retried_with_their_arguments(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`runs retry` of a copy or a fetch (ansible's retry file covers every task): the
    same sources, REMOTE_DIR, mode and LOCAL_DIR (absolute, wherever the retry runs), on
    the failed nodes only; a source removed since is exit 2 before anything runs."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app.conf").write_text("x\n")
    seen: list[tuple[str, str, Any]] = []

    def fake_copy(session: Session, nodes: Sequence[Node], request: commands.CopyRequest,
                  **_kw: Any) -> Any:
        seen.append(("copy", ",".join(ids(tuple(nodes))), request))
        return _Finished(session, "copy", {"sources": [str(tmp_path / "app.conf")],
                                           "remote_dir": request.remote_dir, "mode": "0640",
                                           "preserve": request.preserve}, nodes)

    def fake_fetch(session: Session, nodes: Sequence[Node], request: commands.FetchRequest,
                   **_kw: Any) -> Any:
        seen.append(("fetch", ",".join(ids(tuple(nodes))), request))
        return _Finished(session, "fetch", {"remotes": list(request.remotes),
                                            "local_dir": str(tmp_path / "got")}, nodes)

    monkeypatch.setattr(commands, "copy", fake_copy)
    monkeypatch.setattr(commands, "fetch", fake_fetch)
    with session_over(tmp_path, FakeRunner(mixed)) as session:
        commands.copy(session, NODES, commands.CopyRequest.parse(
            ["app.conf"], "~/etc", mode="640", preserve=True))
        plan = retry.plan(session, "last")
        assert plan.operation == "copy" and ids(plan.nodes) == ["n2", "n3"]
        retry.run(session, plan)
        assert seen[-1] == ("copy", "n2,n3", commands.CopyRequest(
            (str(tmp_path / "app.conf"),), "~/etc", 0o640, True))

        commands.fetch(session, NODES, commands.FetchRequest.parse(["/var/log/app"], "got"))
        monkeypatch.chdir("/")
        retry.run(session, retry.plan(session, "last"))
        last: tuple[str, str, Any] = seen[-1]
        assert last == ("fetch", "n2,n3", commands.FetchRequest(
            ("/var/log/app",), str(tmp_path / "got")))

        commands.copy(session, NODES, commands.CopyRequest.parse(
            [str(tmp_path / "app.conf")], "~/etc"))
        (tmp_path / "app.conf").unlink()
        count = len(seen)
        with pytest.raises(UsageError, match="no such local file or directory"):
            retry.run(session, retry.plan(session, "last"))
        assert len(seen) == count  # nothing ran


def _Finished(session: Session, operation: str, arguments: dict[str, Any],
              nodes: Sequence[Node]) -> Any:
    """What commands.copy/fetch journal, with n2 failed and n3 unreachable."""
    from skeleton_app.results import ClusterResult, NodeResult

    result: ClusterResult[None] = ClusterResult(
        [NodeResult(node=n.id, exit_code=0 if n.id in ("n1", "n4") else 1, duration=0.1)
         if n.id != "n3" else NodeResult(node=n.id, error_kind=NodeErrorKind.UNREACHABLE,
                                         error="no route", duration=0.1) for n in nodes],
        operation=operation, duration=0.1)
    return session.finish(operation, arguments, nodes, result)
