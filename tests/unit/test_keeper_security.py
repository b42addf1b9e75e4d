"""Attacks on warm mode's keeper without SSH (security review of issue #18): what the
connection key must cover so a host key removed from any known_hosts Paramiko reads is never
trusted by a held connector, and frames sized to exhaust the keeper's memory."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skeleton_app.config import SSHSettings
from skeleton_app.keeper import protocol
from skeleton_app.keeper.client import ping, request
from skeleton_app.keeper.held import Digests, connection_key
from skeleton_app.keeper.paths import KeeperPathError, KeeperPaths, base_dir, check_dir
from skeleton_app.keeper.server import Keeper
from skeleton_app.nodes import Node


def test_a_change_to_the_users_default_known_hosts_is_a_new_connection_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ssh.known_hosts names a file of its own, but Paramiko also trusts ~/.ssh/known_hosts
    # (ssh.hostkeys.KeyStores): a key revoked there must not stay trusted by a connector the
    # keeper holds (it would accept that key on its next reconnect).
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    default = tmp_path / ".ssh" / "known_hosts"
    default.write_text("n1 ssh-ed25519 AAAAold\n")
    ssh = SSHSettings(known_hosts=str(tmp_path / "custom_known_hosts"), ssh_config=False)
    node = Node(id="n1", host="10.0.0.1")
    digests = Digests()
    before = connection_key(ssh, node, digests)
    default.write_text("")  # the operator removes the compromised key
    assert connection_key(ssh, node, digests) != before


def test_a_frame_larger_than_any_request_is_refused_before_its_payload_is_read() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(2)
        # exec --stdin is at most 64 MiB (plus a sudo password line): 256 MiB is garbage,
        # and reading it would hold that much of the keeper's memory per connection.
        head = b'{"op":"run"}'
        a.sendall(struct.pack("!II", len(head), 256 << 20) + head)
        with pytest.raises(protocol.ProtocolError, match="too large"):
            protocol.receive(b)


@pytest.fixture
def keeper(tmp_path: Path) -> Iterator[tuple[KeeperPaths, list[str]]]:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    paths = KeeperPaths(run)
    lines: list[str] = []
    k = Keeper(paths, persist=30, log=lines.append)
    assert k.bind()
    thread = threading.Thread(target=k.serve, daemon=True)
    thread.start()
    yield paths, lines
    request(paths, "stop")
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.parametrize("garbage", [
    b"\x00\x00\x00\x05\x00\x00\x00\x00nope!",           # not JSON
    b"\x00\x00\x00\x02\x00\x00\x00\x00[]",              # not an object
    b"\x00\x00\x00\x0b\x00\x00\x00\x00{\"op\": 7}  ",   # op not a string
    b"\xff\xff\xff\xff\xff\xff\xff\xff",                # sizes past every bound
    b"\x00\x00\x00\x10\x00\x00\x00\x00{\"op\":\"run\"}   ",  # run without anything
    b"\x00\x00\x00",                                     # cut short
])
def test_garbage_from_one_client_leaves_the_keeper_serving_the_others(
        keeper: tuple[KeeperPaths, list[str]], garbage: bytes) -> None:
    paths, _ = keeper
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(paths.socket))
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        while sock.recv(4096):
            pass
    deadline = time.monotonic() + 2
    while ping(paths) != os.getpid() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ping(paths) == os.getpid()
    state = request(paths, "status")
    assert state is not None and state["connections"] == []


def test_a_command_with_more_stdin_than_a_frame_takes_runs_without_the_keeper(
        keeper: tuple[KeeperPaths, list[str]]) -> None:
    from skeleton_app.keeper.client import KeeperRunner, _NotStarted
    from skeleton_app.ssh.runner import RunOptions

    paths, _ = keeper
    runner = KeeperRunner(SSHSettings(), paths)
    big = RunOptions(stdin=b"\0" * (protocol.MAX_PAYLOAD + 1))
    with pytest.raises(_NotStarted):  # KeeperRunner.run then runs it itself
        runner._through_keeper(Node(id="n1", host="10.0.0.1"), "cat", big)


def test_a_runtime_dir_that_is_not_private_is_not_used(tmp_path: Path) -> None:
    # `su` keeps the first user's XDG_RUNTIME_DIR: one that is not ours and private is
    # passed over for the cache dir.
    runtime = tmp_path / "run"
    runtime.mkdir()
    runtime.chmod(0o777)
    env = {"XDG_RUNTIME_DIR": str(runtime), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert base_dir(env) == tmp_path / "cache" / "skeleton" / "run"
    runtime.chmod(0o700)
    assert base_dir(env) == runtime / "skeleton"


def test_a_keeper_dir_that_others_may_rename_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone may rename our directory away and put theirs there
    (shared / "skeleton").mkdir(mode=0o700)
    with pytest.raises(KeeperPathError, match="writable by group or others"):
        check_dir(shared / "skeleton")
    shared.chmod(0o1777)  # sticky, like /tmp: only we may rename what is ours
    check_dir(shared / "skeleton")


@pytest.mark.root
def test_a_socket_served_by_another_uid_is_no_keeper() -> None:
    # Whoever swapped the directory (see paths) serves the socket as themselves: a client
    # must not hand them its command, stdin or sudo password.
    shared = Path(tempfile.mkdtemp(prefix="revsec-", dir="/tmp"))
    try:
        shared.chmod(0o777)
        sock_path = shared / "keeper.sock"
        fake = ("import json, os, socket, struct, sys\n"
                "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])\n"
                "os.chmod(sys.argv[1], 0o666); s.listen(4); print('ready', flush=True)\n"
                "c, _ = s.accept(); c.recv(4096)\n"
                "h = json.dumps({'op': 'hello', 'pid': 4242, 'v': 1}).encode()\n"
                "c.sendall(struct.pack('!II', len(h), 0) + h); c.recv(1)\n")
        proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 "/usr/bin/python3", "-c", fake, str(sock_path)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            assert ping(KeeperPaths(shared), timeout=2) is None
        finally:
            proc.kill()
            proc.wait(10)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_known_hosts_rewritten_with_its_mtime_put_back_is_a_new_digest(
        tmp_path: Path) -> None:
    # A host key replaced by one of the same length, the file's mtime restored (`cp -p`,
    # `rsync -t`, `touch -r`): the digest cache must not keep trusting the old content.
    known = tmp_path / "known_hosts"
    known.write_text("n1 ssh-ed25519 AAAAold\n")
    st = known.stat()
    digests = Digests()
    before = digests.digest(str(known))
    known.write_text("n1 ssh-ed25519 AAAAnew\n")
    os.utime(known, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert known.stat().st_size == st.st_size and known.stat().st_mtime_ns == st.st_mtime_ns
    assert digests.digest(str(known)) != before


def test_ctrl_c_while_the_keeper_reads_the_config_is_the_click_paths_interrupt(
        tmp_path: Path) -> None:
    # The keeper took the command ("taking") and is still loading the config or listing the
    # nodes from a slow registry when the operator presses Ctrl-C: no Python traceback, the
    # Click path's words and exit code 130.
    run = tmp_path / "run"
    (run / "skeleton").mkdir(parents=True)
    run.chmod(0o700)
    (run / "skeleton").chmod(0o700)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(run / "skeleton" / "keeper.sock"))
    listener.listen(1)
    taken = threading.Event()

    def keeper() -> None:
        conn, _ = listener.accept()
        with conn:
            protocol.receive(conn)
            protocol.send(conn, {"op": "taking"})
            taken.set()
            time.sleep(5)

    threading.Thread(target=keeper, daemon=True).start()
    code = ("import sys; from skeleton_app.keeper import thin\n"
            "sys.exit(thin.run(['cluster', 'exec', 'true']))\n")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run), "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        assert taken.wait(10)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        listener.close()
    assert "Traceback" not in err and err.strip() == "skeleton: interrupted"
    assert proc.returncode == 130


def test_a_change_to_the_system_ssh_config_is_a_new_connection_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A connector's router parses ~/.ssh/config and /etc/ssh/ssh_config once and keeps them
    # (ssh.route): an admin's new HostName or ProxyJump there must not be ignored by a
    # connector the keeper holds (it would reconnect the old way), as the Click path's
    # fresh connector never ignores it.
    from skeleton_app.keeper import held

    system = tmp_path / "ssh_config"
    system.write_text("Host n1\n  HostName 10.0.0.1\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(held, "SSH_CONFIGS", ("~/.ssh/config", str(system)), raising=False)
    ssh = SSHSettings(known_hosts=str(tmp_path / "known_hosts"), ssh_config=True)
    node = Node(id="n1", host="n1")
    digests = Digests()
    before = connection_key(ssh, node, digests)
    system.write_text("Host n1\n  HostName 10.0.0.99\n")
    assert connection_key(ssh, node, digests) != before
