"""Warm mode's keeper without SSH: the frames, the private directory, the budget of a check,
the server's control requests and life cycle, and the fast path's reading of argv.
(Commands through a keeper, on real sshd hosts: tests/integration/test_keeper.py.)"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skeleton_app.app.exec_argv import parse
from skeleton_app.config import SSHSettings
from skeleton_app.errors import NodeErrorKind
from skeleton_app.keeper import protocol
from skeleton_app.keeper.client import (
    KeeperRunner,
    decode_result,
    encode_result,
    node_from_wire,
    node_to_wire,
    ping,
    request,
    ssh_to_wire,
)
from skeleton_app.keeper.paths import KeeperPathError, KeeperPaths, base_dir, keeper_paths
from skeleton_app.keeper.server import Keeper
from skeleton_app.nodes import Node
from skeleton_app.results import NodeResult


def test_frames_carry_a_header_and_raw_bytes_and_refuse_garbage() -> None:
    a, b = socket.socketpair()
    with a, b:
        protocol.send(a, {"op": "out", "stream": "stdout"}, b"\x00\xffbytes")
        assert protocol.receive(b) == ({"op": "out", "stream": "stdout"}, b"\x00\xffbytes")
        a.sendall(struct.pack("!II", 5, 0) + b"nope!")
        with pytest.raises(protocol.ProtocolError, match="bad frame header"):
            protocol.receive(b)
        a.sendall(struct.pack("!II", protocol.MAX_HEADER + 1, 0))
        with pytest.raises(protocol.ProtocolError, match="too large"):
            protocol.receive(b)
        a.close()
        with pytest.raises(protocol.ProtocolError, match="closed"):
            protocol.receive(b)


def test_results_nodes_and_settings_survive_the_wire(tmp_path: Path) -> None:
    result: NodeResult[None] = NodeResult(node="n1", exit_code=None, stdout="o", stderr="e",
                                          error_kind=NodeErrorKind.TIMEOUT, error="slow",
                                          duration=1.5, stdout_bytes=3, truncated=True)
    assert decode_result(encode_result(result)) == result
    node = Node(id="n1", host="10.0.0.1", roles=("gpu", "asr"), identity_file="/k")
    assert node_from_wire(node_to_wire(node)) == node
    os.chdir(tmp_path)
    wire = ssh_to_wire(SSHSettings(identity_file="id", known_hosts="~/kh"))
    assert wire["identity_file"] == str(tmp_path / "id")  # the keeper's cwd is not ours
    assert wire["known_hosts"] == os.path.expanduser("~/kh")
    assert SSHSettings(**wire).identity_file == str(tmp_path / "id")


def test_the_directory_is_private_and_an_unsafe_one_refused(tmp_path: Path) -> None:
    assert base_dir({"XDG_RUNTIME_DIR": "/run/user/5"}) == Path("/run/user/5/skeleton")
    assert base_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/skeleton/run")
    assert base_dir({"XDG_RUNTIME_DIR": "relative", "XDG_CACHE_HOME": "/c"}) == Path(
        "/c/skeleton/run")
    paths = keeper_paths({"XDG_RUNTIME_DIR": str(tmp_path)})
    assert paths.dir.stat().st_mode & 0o777 == 0o700
    paths.dir.chmod(0o770)
    with pytest.raises(KeeperPathError, match="writable by group or others"):
        keeper_paths({"XDG_RUNTIME_DIR": str(tmp_path)})
    paths.dir.rmdir()
    paths.dir.write_text("")
    with pytest.raises(KeeperPathError, match="not a directory"):
        keeper_paths({"XDG_RUNTIME_DIR": str(tmp_path)})


def _paths(tmp_path: Path) -> KeeperPaths:
    d = tmp_path / "k"
    d.mkdir(mode=0o700)
    return KeeperPaths(d)


def test_a_wedged_keeper_is_given_up_on_within_the_budget(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    wedged = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    wedged.bind(str(paths.socket))
    wedged.listen(8)  # connects succeed (the backlog), nothing ever answers
    with wedged:
        started = time.monotonic()
        assert ping(paths) is None
        assert time.monotonic() - started < 0.5
        starts: list[int] = []
        runner = KeeperRunner(SSHSettings(), paths, start=lambda: starts.append(1))
        assert runner._keeper() is False and runner._keeper() is False
        assert starts == []  # the command runs itself, and starts a replacement at its end
        runner.close()
        runner.close()
        assert starts == [1]
    paths.socket.unlink()
    assert ping(paths) is None  # no socket at all: at once


@pytest.fixture
def keeper(tmp_path: Path) -> Iterator[tuple[Keeper, KeeperPaths, list[str]]]:
    paths = _paths(tmp_path)
    lines: list[str] = []
    k = Keeper(paths, persist=0.6, log=lines.append)
    assert k.bind()
    thread = threading.Thread(target=k.serve, daemon=True)
    thread.start()
    yield k, paths, lines
    request(paths, "stop")
    thread.join(10)
    assert not thread.is_alive()


def test_status_stop_and_a_second_keeper_that_is_not_needed(
        keeper: tuple[Keeper, KeeperPaths, list[str]]) -> None:
    _, paths, lines = keeper
    assert paths.socket.stat().st_mode & 0o777 == 0o600
    assert ping(paths) == os.getpid()
    assert int(paths.pid.read_text()) == os.getpid()
    state = request(paths, "status")
    assert state is not None and state["connections"] == [] and state["pid"] == os.getpid()
    # Two commands start a keeper at once: the second one finds the first and steps back.
    other = Keeper(paths, persist=1, log=lines.append)
    assert other.bind() is False
    # A client of another version: the keeper says so instead of running anything.
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(paths.socket))
        protocol.send(sock, {"op": "run", "ssh": {"no_such_key": 1}, "node": {}})
        header, _ = protocol.receive(sock)
    assert header["op"] == "error" and "bad run request" in header["message"]
    reply = request(paths, "stop")
    assert reply is not None and reply["op"] == "stopping"
    deadline = time.monotonic() + 10
    while "exited" not in lines and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not paths.socket.exists() and not paths.pid.exists()
    assert "stop requested" in lines and lines[-1] == "exited"


def test_a_keeper_holding_nothing_exits_after_persist(
        keeper: tuple[Keeper, KeeperPaths, list[str]]) -> None:
    _, paths, lines = keeper
    deadline = time.monotonic() + 10
    while paths.socket.exists() and time.monotonic() < deadline:  # a ping is activity
        time.sleep(0.1)
    assert not paths.socket.exists()
    assert "nothing held: exiting" in lines


def test_a_keeper_whose_socket_was_taken_over_leaves(
        keeper: tuple[Keeper, KeeperPaths, list[str]]) -> None:
    k, paths, lines = keeper
    k.persist = 60
    paths.socket.unlink()  # what a replacement does before it binds its own
    deadline = time.monotonic() + 10
    while "exited" not in lines and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "another keeper took the socket: exiting" in lines


@pytest.mark.parametrize(("argv", "expected"), [
    (["cluster", "exec", "uptime"], {"words": ["uptime"]}),
    (["-c", "a.yaml", "cluster", "exec", "-n", "node-0[1-2]", "--", "uname", "-r"],
     {"words": ["uname", "-r"], "nodes": ["node-0[1-2]"], "config": "a.yaml"}),
    (["cluster", "exec", "--node=x", "--role", "gpu", "--exclude", "y", "--fanout", "4",
      "--timeout", "2.5", "--format", "tsv", "--json", "-c", "b.yaml", "w"],
     {"words": ["w"], "nodes": ["x"], "roles": ["gpu"], "exclude": ["y"], "fanout": 4,
      "timeout": 2.5, "format": "tsv", "as_json": True, "config": "b.yaml"}),
])
def test_the_fast_path_reads_the_common_exec_forms(argv: list[str],
                                                   expected: dict[str, object]) -> None:
    args = parse(argv)
    assert args is not None
    for key, value in expected.items():
        assert getattr(args, key) == value, key


@pytest.mark.parametrize("argv", [
    [], ["cluster"], ["cluster", "status"], ["--version"], ["cluster", "exec"],
    ["cluster", "exec", "--", " "], ["cluster", "exec", "--help"],
    ["cluster", "exec", "--stream", "x"], ["cluster", "exec", "--stdin", "x"],
    ["cluster", "exec", "--sudo", "x"], ["cluster", "exec", "--list-hosts"],
    ["cluster", "--no-persist", "exec", "x"], ["cluster", "exec", "-n"],
    ["cluster", "exec", "--fanout", "0", "x"], ["cluster", "exec", "--timeout", "nan", "x"],
    ["cluster", "exec", "--timeout", "0", "x"], ["cluster", "exec", "--format", "xml", "x"],
    ["cluster", "exec", "-nnode-01", "x"], ["cluster", "exec", "-n=x", "y"],
    ["cluster", "exec", "uname", "-r"],
])
def test_everything_else_goes_to_click(argv: list[str]) -> None:
    assert parse(argv) is None
