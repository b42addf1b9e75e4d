"""A selection never widens, on real hosts through every front end (issue #11 section 1).

Each command asks every host it runs on to create a marker file in its own home; a refused
selection must exit 2 with one line naming what was wrong and the known nodes, and leave no
marker on any host. A ClusterShell groups config that maps `@stt`, `@ops`, `@nosuch` and
every wildcard to all hosts is planted for every command here: if anything consulted it, the
run would widen to every host.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import REPO, config_variant, plant_clustershell_groups, skeleton

BIN = Path(sys.executable).parent
ALL = ["node-01", "node-02", "node-03", "node-04", "node-05", "node-06"]


@pytest.fixture(scope="module")
def clustershell_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """CLUSTERSHELL_CFGDIR pointing at groups that would select every host."""
    cfg = tmp_path_factory.mktemp("clustershell")
    plant_clustershell_groups(cfg, "".join(
        f"{name}: node-[01-06]\n" for name in ("stt", "ops", "nosuch", "all")))
    env = {"CLUSTERSHELL_CFGDIR": str(cfg)}
    probe = subprocess.run(
        [sys.executable, "-c", "from ClusterShell.NodeSet import NodeSet;"
         " print(NodeSet('@stt'), NodeSet('node-0*'))"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert probe.stdout.split() == ["node-[01-06]", "node-[01-06]"], probe.stderr  # it is live
    return env


@pytest.fixture
def marker(testbed: Testbed) -> Iterator[str]:
    """A file name unique to the test; removed from every host's home afterwards."""
    name = f"selection-marker-{uuid.uuid4().hex[:8]}"
    yield name
    for host in testbed.hosts:
        (host.home / name).unlink(missing_ok=True)


def marked(testbed: Testbed, name: str) -> list[str]:
    """The hosts whose home holds the marker, i.e. where the command ran."""
    return sorted(h.id for h in testbed.hosts if (h.home / name).exists())


def tool(name: str, *args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    full_env.update(env)
    return subprocess.run([str(BIN / name), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=full_env, stdin=subprocess.DEVNULL)


def assert_refused(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("skeleton: error: ") and needle in lines[0], lines[0]
    assert proc.stdout == ""


REFUSED = [
    (["-n", ""], "--node '': empty selection"),
    (["-n", " "], "--node ' ': empty selection"),
    (["-n", ","], "--node ',': empty element"),
    (["-n", "node-01,"], "--node 'node-01,': empty element"),
    (["-n", "node-01", "-n", ""], "--node '': empty selection"),
    (["-n", "@nosuch"], "--node '@nosuch': no group or role named 'nosuch'"),
    (["-n", "@ops"], "--node '@ops': no group or role named 'ops'"),
    (["-n", "@all"], "no group or role named 'all'"),
    (["-n", "node-0[1-6]!node-01"], "invalid node selection"),
    (["-n", "node-09"], "unknown node node-09"),
    (["-n", "nodes-*"], "nodes-* matched no node"),
    (["--exclude", ""], "--exclude '': empty selection"),
    (["--exclude", " "], "--exclude ' ': empty selection"),
    (["--exclude", "node-1"], "--exclude 'node-1': unknown node node-1"),
    (["--role", ""], "--role '': invalid role"),
    (["--role", "stt", "--role", "nope"], "--role nope matched no node"),
]


@pytest.mark.parametrize(("args", "needle"), REFUSED,
                         ids=[" ".join(a) or "empty" for a, _ in REFUSED])
def test_cli_refuses_a_selection_that_names_nothing(
        testbed: Testbed, clustershell_env: dict[str, str], marker: str, args: list[str],
        needle: str) -> None:
    proc = skeleton("cluster", "exec", f"touch ~/{marker}", *args,
                    config=testbed.config_path, env=clustershell_env)
    assert_refused(proc, needle)
    assert "known nodes: node-[01-06]" in proc.stderr
    assert marked(testbed, marker) == []


@pytest.mark.parametrize("command", [["cluster", "status"], ["cluster", "deploy", "--dry-run"],
                                     ["cluster", "daemon", "status"],
                                     ["cluster", "logs", "--out", "/nonexistent/never"]])
def test_every_cluster_command_refuses_an_empty_node(testbed: Testbed, command: list[str],
                                                    clustershell_env: dict[str, str]) -> None:
    proc = skeleton(*command, "-n", "", config=testbed.config_path, env=clustershell_env)
    assert_refused(proc, "--node '': empty selection; known nodes: node-[01-06]")


def test_sync_models_refuses_an_empty_target(testbed: Testbed,
                                             clustershell_env: dict[str, str]) -> None:
    proc = skeleton("cluster", "sync-models", "--source-node", "node-01", "--target-node", "",
                    config=testbed.config_path, env=clustershell_env)
    assert_refused(proc, "--node '': empty selection")


def test_at_name_is_the_role_or_the_config_group_never_clustershell(
        testbed: Testbed, clustershell_env: dict[str, str], marker: str,
        tmp_path: Path) -> None:
    """ClusterShell's planted groups say @stt is every host; ours is the role (odd hosts).
    A config group selects exactly its members, and --exclude narrows it."""
    proc = skeleton("cluster", "exec", f"touch ~/{marker}", "-n", "@stt",
                    config=testbed.config_path, env=clustershell_env)
    assert proc.returncode == 0, proc.stderr
    assert marked(testbed, marker) == ["node-01", "node-03", "node-05"]

    for host in testbed.hosts:
        (host.home / marker).unlink(missing_ok=True)
    cfg = config_variant(testbed, tmp_path / "groups.yaml",
                         groups={"pair": "node-0[2,4]", "edge": ["node-06", "node-05"]})
    proc = skeleton("cluster", "exec", f"touch ~/{marker}", "-n", "@pair,@edge",
                    "--exclude", "node-04", config=cfg, env=clustershell_env)
    assert proc.returncode == 0, proc.stderr
    assert marked(testbed, marker) == ["node-02", "node-05", "node-06"]


def test_a_group_member_that_names_no_node_refuses_the_run(
        testbed: Testbed, clustershell_env: dict[str, str], marker: str,
        tmp_path: Path) -> None:
    cfg = config_variant(testbed, tmp_path / "groups.yaml",
                         groups={"gpu": ["node-01", "node-07"]})
    proc = skeleton("cluster", "exec", f"touch ~/{marker}", "-n", "@gpu", config=cfg,
                    env=clustershell_env)
    assert_refused(proc, "--node '@gpu': group gpu ('node-07'): unknown node node-07;"
                         " known nodes: node-[01-06]")
    assert marked(testbed, marker) == []


@pytest.mark.parametrize(("args", "needle"), [
    (["--node", ""], "--node '': empty selection"),
    (["--node", "node-01", "--node", " "], "--node ' ': empty selection"),
    (["--node", "@nosuch"], "no group or role named 'nosuch'"),
    (["--exclude", ""], "--exclude '': empty selection"),
    (["--role", ""], "--role '': invalid role"),
])
def test_inv_goes_through_the_same_checks(testbed: Testbed, clustershell_env: dict[str, str],
                                          marker: str, args: list[str], needle: str) -> None:
    proc = tool("inv", "exec", "--command", f"touch ~/{marker}", *args,
                "--config", str(testbed.config_path), env=clustershell_env)
    assert_refused(proc, needle)
    assert "known nodes: node-[01-06]" in proc.stderr
    assert marked(testbed, marker) == []


@pytest.mark.parametrize(("hosts", "needle"), [
    (",", "-H ',': empty host"),
    ("node-01,", "-H 'node-01,': empty host"),
    ("@stt", "-H '@stt': '@stt' is a group or role"),
    ("node-01,@ops", "'@ops' is a group or role"),
])
def test_fab_goes_through_the_same_checks(testbed: Testbed, clustershell_env: dict[str, str],
                                          marker: str, hosts: str, needle: str) -> None:
    proc = tool("fab", "-H", hosts, "run", "--command", f"touch ~/{marker}",
                env={**clustershell_env, "SKELETON_CONFIG": str(testbed.config_path)})
    assert_refused(proc, needle)
    assert marked(testbed, marker) == []
    # and a good host list still runs, on exactly those hosts
    proc = tool("fab", "-H", "node-02,node-03", "run", "--command", f"touch ~/{marker}",
                env={**clustershell_env, "SKELETON_CONFIG": str(testbed.config_path)})
    assert proc.returncode == 0, proc.stderr
    assert marked(testbed, marker) == ["node-02", "node-03"]


def test_missing_identity_file_refuses_before_any_node_runs(
        testbed: Testbed, marker: str, tmp_path: Path) -> None:
    """It was reported on every node as `lost`; now one line and exit 2."""
    key = tmp_path / "no-such-key"
    cfg = config_variant(testbed, tmp_path / "nokey.yaml", ssh={"identity_file": str(key)})
    proc = skeleton("cluster", "exec", f"touch ~/{marker}", config=cfg)
    assert_refused(proc, f"{cfg}: ssh.identity_file: no such file '{key}'")
    assert marked(testbed, marker) == []
