"""`skeleton cluster top` in a real terminal: tmux (80x24, a server on a socket of the test's
own) runs the real CLI against a testbed whose real daemons heartbeat into a real PostgreSQL.
Keys go in with `send-keys`, the screen comes back with `capture-pane -p`.

One testbed for the module (set-up ~40 s: hosts, bootstrap, daemons with a 1 s heartbeat).
Every tmux pane runs `top; echo EXIT=$?; stty -a; sleep`, so the exit code and the
terminal's modes after the command are on the screen too.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from skeleton_app.testing import localdb
from skeleton_app.testing import testbed as tb_mod
from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import REPO, bootstrap_testbed, config_variant, skeleton

pytestmark = pytest.mark.postgres  # the module's testbed starts one

HEARTBEAT = 1.0  # seconds between a daemon's heartbeats
NODES = ("node-01", "node-02", "node-03")
SPARK = set("▁▂▃▄▅▆▇█")
AGE = re.compile(r"^\d+(s|m)!?$")


@dataclass(frozen=True)
class Bed:
    testbed: Testbed
    config: Path


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    # Directly under /tmp (PostgreSQL, as `postgres`, must traverse it), as conftest does.
    state = Path(tempfile.mkdtemp(prefix="skeleton-testbed-pytest-", dir="/tmp"))
    state.chmod(0o755)
    testbed = tb_mod.up(len(NODES), instance=None, state_dir=state, db=True)
    try:
        daemon = yaml.safe_load(testbed.config_path.read_text())["daemon"]
        command = f"env SKELETON_HEARTBEAT_INTERVAL={HEARTBEAT:g} {daemon['command']}"
        config = config_variant(testbed, tmp_path_factory.mktemp("top") / "config.yaml",
                                daemon={"command": command})
        bootstrap_testbed(testbed)
        started = skeleton("cluster", "daemon", "start", "--wait-healthy", config=config)
        assert started.returncode == 0, started.stdout + started.stderr
        try:
            yield Bed(testbed, config)
        finally:
            skeleton("cluster", "daemon", "stop", config=config)
    finally:
        tb_mod.down(testbed.state_dir, instance=testbed.instance)


class Tmux:
    """A tmux server of the test's own (`-S` socket in tmp_path), killed at teardown."""

    def __init__(self, socket: Path):
        self.socket = socket

    def __call__(self, *args: str) -> str:
        proc = subprocess.run(["tmux", "-S", str(self.socket), *args], capture_output=True,
                              text=True, timeout=30, check=True)
        return proc.stdout

    def start(self, name: str, command: str) -> None:
        self("new-session", "-d", "-x", "80", "-y", "24", "-s", name, command)

    def screen(self, name: str) -> list[str]:
        return self("capture-pane", "-p", "-t", f"={name}:").splitlines()

    def keys(self, name: str, *keys: str) -> None:
        # `=NAME:` is exactly that session's pane: a bare `top` may resolve to another
        # session's pane once there are two.
        self("send-keys", "-t", f"={name}:", *keys)

    def wait(self, name: str, check: Callable[[list[str]], Any], what: str,
             timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.screen(name)
            value = check(lines)
            if value:
                return value
            assert time.monotonic() < deadline, f"{what}; the screen:\n" + "\n".join(lines)
            time.sleep(0.3)

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True,
                       timeout=30, check=False)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    server = Tmux(tmp_path / "tmux.sock")
    try:
        yield server
    finally:
        server.kill()


def top_command(config: Path, *args: str) -> str:
    """What a pane runs: the real CLI, then its exit code and the terminal's modes."""
    argv = [sys.executable, "-m", "skeleton_app", "cluster", "top", "--config", str(config),
            *args]
    # `trap : INT`: the pane's shell outlives a Ctrl-C (its child still gets the default
    # SIGINT) and prints what happened.
    return (f"trap : INT; cd {shlex.quote(str(REPO))} && env -u SKELETON_DATABASE_URL"
            f" {shlex.join(argv)}; echo EXIT=$?; stty -a; sleep 600")


def rows(lines: list[str]) -> dict[str, list[str]]:
    """The node rows on the screen: id -> its cells (split on spaces)."""
    out: dict[str, list[str]] = {}
    for line in lines:
        words = line.split()
        if words and words[0] in NODES:
            out[words[0]] = words
    return out


def spark_cells(line: list[str]) -> int:
    return sum(ch in SPARK for word in line for ch in word)


def order(lines: list[str]) -> list[str]:
    return [line.split()[0] for line in lines if line.split() and line.split()[0] in NODES]


def exited(lines: list[str]) -> int | None:
    for line in lines:
        if line.startswith("EXIT="):
            return int(line[5:])
    return None


def terminal_restored(lines: list[str]) -> bool:
    text = " ".join(lines)
    words = set(text.split())
    return "icanon" in words and "echo" in words and "-icanon" not in words


def test_top_live_in_80x24(bed: Bed, tmux: Tmux) -> None:
    db = bed.testbed.db
    assert db is not None
    tmux.start("top", top_command(bed.config, "--interval", "1", "--sort", "name"))

    # Every node appears, with a heartbeat age, within the 80 columns.
    def all_nodes(lines: list[str]) -> dict[str, list[str]] | None:
        found = rows(lines)
        ok = set(found) == set(NODES) and all(
            any(AGE.match(cell) for cell in row) for row in found.values())
        return found if ok else None

    first = tmux.wait("top", all_nodes, "every node with a heartbeat age")
    assert all(len(line) <= 80 for line in tmux.screen("top"))
    assert order(tmux.screen("top")) == list(NODES)  # --sort name

    # The sparklines fill as heartbeats arrive (a bar per 5 s bucket).
    before = {n: spark_cells(row) for n, row in first.items()}
    tmux.wait("top", lambda lines: (now := rows(lines)) and all(
        spark_cells(now.get(n, [])) > before[n] for n in NODES), "the sparklines grow",
        timeout=40)

    # The registry goes away: the view says so and keeps running; it recovers after. A
    # `top` started during the outage waits for it too (its nodes come from the registry).
    def down(lines: list[str]) -> bool:
        return any("registry down" in line for line in lines)

    localdb.stop_postgres(db.dir)
    try:
        tmux.wait("top", down, "the registry's outage on screen", timeout=30)
        assert exited(tmux.screen("top")) is None
        tmux.start("late", top_command(bed.config, "--interval", "1"))
        tmux.wait("late", down, "the outage on a view started during it", timeout=30)
    finally:
        localdb.start_postgres(db.dir, listen=("127.0.0.1", bed.testbed.gateway),
                               port=db.port)
    for name in ("top", "late"):
        tmux.wait(name, lambda lines: not down(lines) and all_nodes(lines),
                  f"the view {name!r} recovers", timeout=60)
    tmux.keys("late", "q")
    late = tmux.wait("late", lambda lines: exited(lines) is not None and lines,
                     "the late view quits", timeout=20)
    assert exited(late) == 0

    # `s` cycles the sort key: name -> load -> mem -> gpu -> age. The node whose daemon
    # stopped has the oldest heartbeat, and the age sort puts it on top.
    stop = skeleton("cluster", "daemon", "stop", "--node", "node-03", config=bed.config)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    try:
        tmux.wait("top", lambda lines: (r := rows(lines)) and "stop" in r.get("node-03", []),
                  "node-03's daemon shown stopped", timeout=30)
        time.sleep(3 * HEARTBEAT)  # its heartbeat is now the oldest
        for key in ("load", "mem", "gpu", "age"):
            tmux.keys("top", "s")
            tmux.wait("top", lambda lines, k=key: f"sort {k} " in lines[0],
                      f"the title says sort {key}", timeout=10)
        tmux.wait("top", lambda lines: order(lines)[:1] == ["node-03"],
                  "the stalest node first under sort age", timeout=10)
    finally:
        skeleton("cluster", "daemon", "start", "--node", "node-03", config=bed.config)

    # `q` quits with 0, and the terminal is back in its normal (cooked, echoing) modes.
    tmux.keys("top", "q")
    lines = tmux.wait("top", lambda lines: exited(lines) is not None and lines, "exit after q",
                      timeout=20)
    assert exited(lines) == 0
    assert tmux.wait("top", terminal_restored, "stty -a after the exit", timeout=10)


def test_top_ctrl_c_exits_130_and_restores_the_terminal(bed: Bed, tmux: Tmux) -> None:
    tmux.start("top", top_command(bed.config, "--interval", "1"))
    tmux.wait("top", lambda lines: set(rows(lines)) == set(NODES), "the first frame")
    tmux.keys("top", "C-c")
    lines = tmux.wait("top", lambda lines: exited(lines) is not None and lines,
                      "exit after Ctrl-C", timeout=20)
    assert exited(lines) == 130
    assert tmux.wait("top", terminal_restored, "stty -a after the exit", timeout=10)


def test_top_once_json_from_the_registry(bed: Bed) -> None:
    proc = skeleton("cluster", "top", "--once", "--json", config=bed.config)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["source"] == "registry" and data["problem"] is None
    nodes = {n["id"]: n for n in data["nodes"]}
    assert set(nodes) == set(NODES)
    for node in nodes.values():
        assert node["daemon"] == "running" and node["heartbeat_age"] < 30
        assert node["latest"]["load1"] is not None and node["latest"]["mem_total"] > 0
        assert node["history"] and node["jobs_running"] == 0  # the queue is there, empty
