"""Warm mode's OpenSSH masters for rsync and fetch (ssh/openssh.py `share_connections`):
off unless asked; one ControlPath per connection key (the argv and the files behind it), so
a config change never reuses a master made under the old settings; paths escaped for ssh.
(Masters over real sshd hosts: tests/integration/test_keeper.py.)"""

from __future__ import annotations

import os
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


def _control(argv: list[str]) -> str | None:
    found = [a.split("=", 1)[1] for a in argv if a.startswith("ControlPath=")]
    return found[0] if found else None


def test_off_by_default_and_on_for_warm_mode(tmp_path: Path) -> None:
    settings = SSHSettings(known_hosts=str(tmp_path / "kh"))
    assert _control(openssh.ssh_argv(NODE, settings)) is None
    openssh.share_connections(str(tmp_path), 30)
    argv = openssh.ssh_argv(NODE, settings, extra=["-T"])
    path = _control(argv)
    assert path is not None and path.startswith(str(tmp_path / "cm-"))
    assert "ControlMaster=auto" in argv and "ControlPersist=30" in argv
    assert argv[-1] == "-T"  # the caller's extra options stay last
    assert _control(openssh.ssh_argv(NODE, settings)) == path  # the same key, the same master
    openssh.share_connections(None)
    assert _control(openssh.ssh_argv(NODE, settings)) is None


def test_a_change_of_settings_or_of_a_file_behind_them_is_another_master(
        tmp_path: Path) -> None:
    known = tmp_path / "kh"
    known.write_text("n1 ssh-ed25519 AAAA\n")
    settings = SSHSettings(known_hosts=str(known))
    openssh.share_connections(str(tmp_path), 30)
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


def test_a_directory_with_a_space_or_percent_is_escaped_for_ssh(tmp_path: Path) -> None:
    odd = tmp_path / "a b%h"
    odd.mkdir()
    openssh.share_connections(str(odd), 30)
    path = _control(openssh.ssh_argv(NODE, SSHSettings(known_hosts=str(tmp_path / "kh"))))
    assert path is not None and path.startswith('"') and path.endswith('"')
    assert "a b%%h" in path
