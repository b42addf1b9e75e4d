"""Warm mode's OpenSSH masters for rsync and fetch (ssh/openssh.py `share_connections`):
off unless asked; one ControlPath per connection key (the argv and the files behind it), so
a config change never reuses a master made under the old settings; paths escaped for ssh.
(Masters over real sshd hosts: tests/integration/test_keeper.py.)"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from skeleton_app.config import SSHSettings
from skeleton_app.nodes import Node
from skeleton_app.ssh import openssh

NODE = Node(id="n1", host="10.9.0.1", user="ops")


@pytest.fixture(autouse=True)
def _off() -> Iterator[None]:
    yield
    openssh.share_connections(None)


@pytest.fixture
def short() -> Iterator[Path]:
    """A keeper-like directory short enough for a socket (pytest's tmp_path often is not:
    see test_a_directory_too_long_for_a_unix_socket_shares_no_connection)."""
    path = Path(tempfile.mkdtemp(prefix="cm", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _control(argv: list[str]) -> str | None:
    found = [a.split("=", 1)[1] for a in argv if a.startswith("ControlPath=")]
    return found[0] if found else None


def test_off_by_default_and_on_for_warm_mode(tmp_path: Path, short: Path) -> None:
    settings = SSHSettings(known_hosts=str(tmp_path / "kh"))
    assert _control(openssh.ssh_argv(NODE, settings)) is None
    openssh.share_connections(str(short), 30)
    argv = openssh.ssh_argv(NODE, settings, extra=["-T"])
    path = _control(argv)
    assert path is not None and path.startswith(str(short / "cm-"))
    assert "ControlMaster=auto" in argv and "ControlPersist=30" in argv
    assert argv[-1] == "-T"  # the caller's extra options stay last
    assert _control(openssh.ssh_argv(NODE, settings)) == path  # the same key, the same master
    openssh.share_connections(None)
    assert _control(openssh.ssh_argv(NODE, settings)) is None


def test_a_change_of_settings_or_of_a_file_behind_them_is_another_master(
        tmp_path: Path, short: Path) -> None:
    known = tmp_path / "kh"
    known.write_text("n1 ssh-ed25519 AAAA\n")
    settings = SSHSettings(known_hosts=str(known))
    openssh.share_connections(str(short), 30)
    first = _control(openssh.ssh_argv(NODE, settings))
    others = {
        _control(openssh.ssh_argv(NODE, SSHSettings(known_hosts=str(known),
                                                     host_key_policy="accept-new"))),
        _control(openssh.ssh_argv(Node(id="n1", host="10.9.0.2", user="ops"), settings)),
        _control(openssh.ssh_argv(Node(id="n1", host="10.9.0.1", user="root"), settings)),
    }
    known.write_text("n1 ssh-ed25519 BBBB\n")  # a key replaced: the file's facts change
    os.utime(known, (1, 1))
    others.add(_control(openssh.ssh_argv(NODE, settings)))
    assert first not in others and len(others) == 4


def test_a_directory_with_a_space_or_percent_is_escaped_for_ssh(tmp_path: Path,
                                                                 short: Path) -> None:
    odd = short / "a b%h"
    odd.mkdir()
    openssh.share_connections(str(odd), 30)
    path = _control(openssh.ssh_argv(NODE, SSHSettings(known_hosts=str(tmp_path / "kh"))))
    assert path is not None and path.startswith('"') and path.endswith('"')
    assert "a b%%h" in path


def test_a_directory_too_long_for_a_unix_socket_shares_no_connection(tmp_path: Path) -> None:
    """ssh refuses a ControlPath over sun_path ("ControlPath too long"): every warm copy and
    fetch failed where cold ones worked. Such a directory connects as in cold mode."""
    settings = SSHSettings(known_hosts=str(tmp_path / "kh"))
    room = openssh.SUN_PATH_MAX - 17 - len("/cm-") - 32 - 1  # the longest directory that fits
    fits = "/" + "d" * (room - 1)
    openssh.share_connections(fits, 30)
    path = _control(openssh.ssh_argv(NODE, settings))
    assert path is not None and len(path) + 17 < openssh.SUN_PATH_MAX
    openssh.share_connections(fits + "d", 30)
    argv = openssh.ssh_argv(NODE, settings)
    assert _control(argv) is None and not any(a.startswith("Control") for a in argv)


def test_an_edit_in_an_included_ssh_config_is_another_master(
        tmp_path: Path, short: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """~/.ssh/config's `Include config.d/*`: a ProxyJump or User changed there must not
    reuse the master made under the old one."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh" / "config.d").mkdir(parents=True)
    (tmp_path / ".ssh" / "config").write_text("Include config.d/*\n")
    extra = tmp_path / ".ssh" / "config.d" / "nodes"
    extra.write_text("Host 10.9.0.1\n  User ops\n")
    settings = SSHSettings(known_hosts=str(tmp_path / "kh"))
    openssh.share_connections(str(short), 30)
    first = _control(openssh.ssh_argv(NODE, settings))
    extra.write_text("Host 10.9.0.1\n  ProxyJump bastion\n")
    os.utime(extra, (1, 1))
    assert _control(openssh.ssh_argv(NODE, settings)) != first


def test_close_masters_reaches_a_socket_in_a_directory_with_a_space_or_percent(
        short: Path) -> None:
    """`keeper stop` asked `ssh -O exit` with the path unescaped: ssh split it at the space
    (or expanded `%h`), never reached the master, and the live master's socket was unlinked
    (left running, unreachable, until ControlPersist ran out)."""
    import socket
    import threading

    odd = short / "a b%h"
    odd.mkdir()
    path = odd / (openssh.MASTER_PREFIX + "0" * 32)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(10)
    reached: list[bool] = []

    def accept() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        reached.append(True)
        conn.close()

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        openssh.close_masters(str(odd))
        th.join(10)
    finally:
        server.close()
    assert reached, "ssh -O exit never connected to the master's socket"


def test_close_masters_skips_a_master_that_never_answers(
        short: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wedged master (its socket accepts, nothing answers): `keeper stop` said nothing
    but a TimeoutExpired traceback; now that master is skipped and the others closed."""
    import socket

    monkeypatch.setattr(openssh, "EXIT_TIMEOUT", 1.0, raising=False)
    path = short / (openssh.MASTER_PREFIX + "1" * 32)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)  # accepted by the kernel, never read
    try:
        assert openssh.close_masters(str(short)) == 0
    finally:
        server.close()
