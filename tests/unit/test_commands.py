"""The application layer (`skeleton_app.app.commands`) over the fake runner: the exit-code
contract for mixed results, one journal record per command holding every node's outcome,
the registry opened once per command (and psycopg never imported without one), and the
Click front end's `--help` on every command."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import click
import pytest
from click.testing import CliRunner

from skeleton_app.app import commands
from skeleton_app.app.commands import Selection, Session
from skeleton_app.cluster import Cluster
from skeleton_app.config import RegistrySettings, Settings
from skeleton_app.errors import ExitCode, NodeError, NodeErrorKind, RegistryError
from skeleton_app.nodes import Node
from skeleton_app.registry import NodeEntry, NodeSpec, Registry, RunRecord
from skeleton_app.results import ClusterResult
from skeleton_app.testing.fake import Call, FakeRunner, Reply

NODES = tuple(Node(id=f"n{i}", host=f"10.0.0.{i}") for i in (1, 2, 3))
WITH_DSN = dataclasses.replace(Settings(), registry=RegistrySettings(
    dsn="postgresql://skeleton@127.0.0.1:9/skeleton"))


class FakeRegistry:
    """A registry stand-in (the `Registry` protocol) that records what a command did."""

    def __init__(self, *, fail_journal: bool = False):
        self.calls: list[str] = []
        self.runs: list[tuple[str, Mapping[str, Any], Sequence[str]]] = []
        self.node_results: list[ClusterResult[Any]] = []
        self.fail_journal = fail_journal
        self.closed = 0

    @property
    def source(self) -> str:
        return "fake"

    def list_nodes(self, *, enabled_only: bool = True
                   ) -> tuple[tuple[Node, ...], tuple[str, ...]]:
        self.calls.append("list_nodes")
        return NODES, ()

    def list_entries(self, *, enabled_only: bool = False
                     ) -> tuple[tuple[NodeEntry, ...], tuple[str, ...]]:
        raise NotImplementedError

    def upsert_node(self, node: Node | NodeSpec, *, labels: Mapping[str, str] | None = None,
                    capabilities: Mapping[str, Any] | None = None) -> bool:
        raise NotImplementedError

    def remove_node(self, node_id: str) -> bool:
        raise NotImplementedError

    def register_self(self, node: Node, *,
                      capabilities: Mapping[str, Any] | None = None) -> bool:
        raise NotImplementedError

    def approve(self, node_id: str) -> bool:
        raise NotImplementedError

    def issue_credentials(self, node_id: str) -> str:
        raise NotImplementedError

    def set_enabled(self, node_id: str, enabled: bool) -> bool:
        raise NotImplementedError

    def heartbeat(self, node_id: str, *, metrics: Mapping[str, Any],
                  daemon_state: str = "running", code_version: str | None = None,
                  daemon_pid: int | None = None, started_at: datetime | None = None) -> bool:
        raise NotImplementedError

    def mark_stopped(self, node_id: str) -> bool:
        raise NotImplementedError

    def heartbeats(self, node_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        self.calls.append("heartbeats")
        return {n: {"seen_ago": 1.0} for n in node_ids}

    def record_status(self, node_id: str, status: Mapping[str, Any]) -> bool:
        self.calls.append("record_status")
        return True

    def record_run(self, operation: str, arguments: Mapping[str, Any],
                   selection: Sequence[str], who: str | None = None) -> int | None:
        self.calls.append("record_run")
        if self.fail_journal:
            raise RegistryError("the journal is read-only today")
        self.runs.append((operation, dict(arguments), list(selection)))
        return len(self.runs)

    def record_node_results(self, run_id: int | None, result: ClusterResult[Any]) -> None:
        self.calls.append("record_node_results")
        self.node_results.append(result)

    def list_runs(self, *, limit: int = 20) -> tuple[RunRecord, ...]:
        raise NotImplementedError

    def get_run(self, run_id: int) -> RunRecord | None:
        raise NotImplementedError

    def last_run(self, *, who: str | None = None) -> RunRecord | None:
        raise NotImplementedError

    def close(self) -> None:
        self.closed += 1

    def __enter__(self) -> FakeRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _typed(registry: FakeRegistry) -> Registry:
    return registry  # mypy checks here that the stand-in implements the protocol


def mixed(call: Call) -> Reply | NodeError:
    """n1 succeeds, n2 exits 3, n3 cannot be reached."""
    if call.node == "n3":
        return NodeError(NodeErrorKind.UNREACHABLE, "no route to host")
    return Reply(3 if call.node == "n2" else 0, stdout=f"{call.node}\n")


class Opener:
    """Counts how often a command opens the registry."""

    def __init__(self, registry: FakeRegistry):
        self.registry = registry
        self.opened = 0

    def __call__(self, settings: Settings) -> Registry:
        self.opened += 1
        return _typed(self.registry)


@pytest.fixture
def journal() -> Iterator[tuple[FakeRegistry, Opener]]:
    registry = FakeRegistry()
    yield registry, Opener(registry)


@pytest.mark.parametrize(("nodes", "expected"), [
    (("n1",), ExitCode.OK),
    (("n1", "n2"), ExitCode.FAILED),
    (("n1", "n2", "n3"), ExitCode.UNREACHABLE),  # unreachable wins over failed
    (("n3",), ExitCode.UNREACHABLE),
])
def test_exit_code_of_mixed_results(nodes: tuple[str, ...], expected: ExitCode) -> None:
    cluster = Cluster(Settings(), NODES, connector=FakeRunner(mixed))
    with Session(cluster=cluster) as session:
        done = commands.exec_command(session, session.select(Selection(nodes)), "true")
    assert done.exit_code == expected
    assert tuple(done.result) == nodes and [n.id for n in done.nodes] == list(nodes)


def test_a_precondition_refusal_is_a_failed_node_not_an_unreachable_one() -> None:
    def refuse(call: Call) -> Reply | NodeError:
        return NodeError(NodeErrorKind.LOCAL, "deploy lock held") if call.node == "n2" \
            else Reply(0)

    cluster = Cluster(Settings(), NODES, connector=FakeRunner(refuse))
    with Session(cluster=cluster) as session:
        done = commands.exec_command(session, NODES, "true")
    assert done.exit_code == ExitCode.FAILED


def test_one_journal_record_per_command_with_every_node(
        journal: tuple[FakeRegistry, Opener]) -> None:
    registry, opener = journal
    with Session(settings=WITH_DSN, connector=FakeRunner(mixed), opener=opener) as session:
        done = commands.exec_command(session, session.select(Selection()), "uname -r",
                                     timeout=5.0)
    assert registry.runs == [("exec", {"command": "uname -r", "timeout": 5.0},
                              ["n1", "n2", "n3"])]
    assert len(registry.node_results) == 1
    recorded = registry.node_results[0]
    assert recorded is done.result and set(recorded) == {"n1", "n2", "n3"}
    assert recorded["n2"].exit_code == 3
    assert recorded["n3"].error_kind == NodeErrorKind.UNREACHABLE


def test_status_opens_the_registry_once_for_nodes_heartbeats_and_journal(
        journal: tuple[FakeRegistry, Opener]) -> None:
    registry, opener = journal
    with Session(settings=WITH_DSN, connector=FakeRunner(mixed), opener=opener) as session:
        done = commands.status(session, session.select(Selection()))
    assert opener.opened == 1 and registry.closed == 1
    assert registry.calls[0] == "list_nodes" and registry.calls.count("heartbeats") == 1
    assert registry.calls[-2:] == ["record_run", "record_node_results"]
    assert registry.runs == [("status", {}, ["n1", "n2", "n3"])]
    assert done.registry_rows == {n.id: {"seen_ago": 1.0} for n in NODES}
    assert done.exit_code == ExitCode.UNREACHABLE


def test_every_command_opens_the_registry_once(journal: tuple[FakeRegistry, Opener]) -> None:
    registry, opener = journal
    with Session(settings=WITH_DSN, connector=FakeRunner(mixed), opener=opener) as session:
        nodes = session.select(Selection(("n1",)))
        commands.exec_command(session, nodes, "true")
        commands.daemon(session, nodes, "status")
    # One session, one connection: nodes listed once, two runs journaled over it.
    assert opener.opened == 1 and registry.calls.count("list_nodes") == 1
    assert [run[0] for run in registry.runs] == ["exec", "daemon status"]


def test_fanout_bounds_the_cluster_and_reaches_the_operations() -> None:
    session = Session(fanout=2)
    assert session.overrides == {"ssh.fanout": 2} and session.fanout == 2
    # The CLI's Ctx puts --fanout in the overrides: the operations still get it.
    assert Session(overrides={"ssh.fanout": 3}).fanout == 3
    assert Session().fanout is None


def test_a_journal_that_cannot_be_written_is_one_warning_and_keeps_the_exit_code() -> None:
    registry = FakeRegistry(fail_journal=True)
    warnings: list[str] = []
    with Session(settings=WITH_DSN, connector=FakeRunner(mixed), opener=Opener(registry),
                 warn=warnings.append) as session:
        done = commands.exec_command(session, session.select(Selection(("n2",))), "false")
    assert done.exit_code == ExitCode.FAILED
    assert warnings == ["skeleton: warning: run not recorded in the registry:"
                        " the journal is read-only today"]


def test_without_a_registry_nothing_is_opened_and_psycopg_is_not_imported() -> None:
    code = r"""
import sys
from skeleton_app.app import commands
from skeleton_app.app.commands import Selection, Session
from skeleton_app.config import Settings
from skeleton_app.nodes import Node
from skeleton_app.testing.fake import FakeRunner, Reply, always

def opener(settings):
    raise AssertionError("opened a registry")

settings = Settings(nodes=(Node(id="n1", host="10.0.0.1"),))
with Session(settings=settings, connector=FakeRunner(always(Reply(0))), opener=opener) as s:
    done = commands.status(s, s.select(Selection()))
assert done.registry_rows is None
print("psycopg" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def _paths(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _paths(sub, (*path, name))


def test_help_of_the_cli_and_of_every_subcommand() -> None:
    from skeleton_app.app.cli import cli

    paths = list(_paths(cli))
    assert ("cluster", "status") in paths and ("testbed", "up") in paths
    assert ("nodes", "list") in paths and ("daemon", "run") in paths
    for path in paths:
        result = CliRunner().invoke(cli, [*path, "--help"], prog_name="skeleton")
        assert result.exit_code == 0, (path, result.output)
        assert "Usage: skeleton" in result.output, path
