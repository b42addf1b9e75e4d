"""`User` and `Port` from ~/.ssh/config, with OpenSSH's precedence (ssh/openssh_config.py):
the node's own user/port > the ssh section set explicitly > ssh_config > defaults. HOME points at
a temporary directory, so the developer's own ~/.ssh/config never plays a part."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from skeleton_app.config import load_config
from skeleton_app.errors import ConfigError
from skeleton_app.registry import NodeDefaults, NodeSpec
from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import skeleton


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    (path / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(path))
    return path


def _config(tmp_path: Path, data: dict[str, object], name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


SSH_CONFIG = "Host web*\n  User deploy\n  Port 2222\nHost *\n  User fallback\n"


def test_precedence(home: Path, tmp_path: Path) -> None:
    (home / ".ssh" / "config").write_text(SSH_CONFIG)
    nodes = [{"id": "web1", "host": "web1"},  # ssh_config's User and Port
             {"id": "web2", "host": "web2", "user": "own", "port": 2200},  # the node's own
             {"id": "db1", "host": "db1"}]  # `Host *`: the user; the port stays the default
    path = _config(tmp_path, {"nodes": nodes})
    by_id = {n.id: (n.user, n.port) for n in load_config(path, env={}).nodes}
    assert by_id == {"web1": ("deploy", 2222), "web2": ("own", 2200), "db1": ("fallback", 22)}

    # An explicit ssh section (file, environment or flag) wins over ssh_config.
    explicit = _config(tmp_path, {"ssh": {"user": "ops"}, "nodes": nodes}, "explicit.yaml")
    by_id = {n.id: (n.user, n.port) for n in load_config(explicit, env={}).nodes}
    assert by_id == {"web1": ("ops", 2222), "web2": ("own", 2200), "db1": ("ops", 22)}
    env = load_config(path, env={"SKELETON_SSH_PORT": "22"})
    assert (env.nodes[0].user, env.nodes[0].port) == ("deploy", 22)
    flag = load_config(path, env={}, overrides={"ssh.user": "cli"})
    assert [n.user for n in flag.nodes] == ["cli", "own", "cli"]

    # ssh_config: false ignores the file.
    off = _config(tmp_path, {"ssh": {"ssh_config": False}, "nodes": nodes}, "off.yaml")
    settings = load_config(off, env={})
    assert settings.nodes[0].port == 22 and settings.nodes[0].user == settings.ssh.user


def test_registry_rows_and_adhoc_hosts_follow_the_same_rules(home: Path, tmp_path: Path) -> None:
    (home / ".ssh" / "config").write_text(SSH_CONFIG)
    settings = load_config(_config(tmp_path, {}), env={})
    defaults = NodeDefaults.from_settings(settings)
    assert NodeSpec(id="w", host="web7").resolve(defaults).user == "deploy"
    assert NodeSpec(id="w", host="web7", user="row").resolve(defaults).user == "row"
    assert NodeSpec(id="w", host="web7").resolve(defaults).port == 2222
    from skeleton_app.remote import SSHExecutor

    node = SSHExecutor(settings=settings).node("web3")
    assert (node.user, node.port) == ("deploy", 2222)


def test_a_bad_user_or_port_in_ssh_config_is_a_config_error(home: Path, tmp_path: Path) -> None:
    (home / ".ssh" / "config").write_text("Host web1\n  Port 99999\n")
    path = _config(tmp_path, {"nodes": [{"id": "web1", "host": "web1"}]})
    with pytest.raises(ConfigError, match=r"ssh_config.*web1.*99999"):
        load_config(path, env={})


def _aliased(testbed: Testbed, tmp_path: Path, home: Path, *, user: str | None) -> Path:
    """A config whose one node is the alias `alias-node` of node-02 in HOME's ~/.ssh/config
    (User skeleton, Port 22), with ssh.user unset unless `user` is given."""
    target = testbed.host("node-02")
    (home / ".ssh" / "config").write_text(
        f"Host alias-node\n  HostName {target.ip}\n  User skeleton\n  Port 22\n")
    data = yaml.safe_load(testbed.config_path.read_text())
    data["ssh"].pop("user", None)
    data["ssh"].pop("port", None)
    if user is not None:
        data["ssh"]["user"] = user
    # The host key is known under the address; OpenSSH checks it under the alias's HostName.
    data["nodes"] = [{"id": "aliased", "host": "alias-node"}]
    return _config(tmp_path, data)


def test_ssh_config_user_logs_in_on_a_real_host(testbed: Testbed, tmp_path: Path,
                                                home: Path) -> None:
    config = _aliased(testbed, tmp_path, home, user=None)
    proc = skeleton("cluster", "exec", "whoami; hostname", "--json", config=config,
                    env={"HOME": str(home)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = yaml.safe_load(proc.stdout)["nodes"]["aliased"]
    assert result["stdout"].split() == ["skeleton", "node-02"]
    assert getpass.getuser() != "skeleton"  # so the user came from ~/.ssh/config


def test_an_explicit_user_wins_and_the_auth_error_names_it(testbed: Testbed, tmp_path: Path,
                                                           home: Path) -> None:
    config = _aliased(testbed, tmp_path, home, user="nobody")
    proc = skeleton("cluster", "exec", "whoami", config=config, env={"HOME": str(home)})
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "auth: authentication failed for nobody@alias-node:22" in proc.stdout + proc.stderr


def test_rsync_and_fabric_use_the_same_ssh_config_user(testbed: Testbed, tmp_path: Path,
                                                       home: Path) -> None:
    # OpenSSH (rsync -e ssh) reads the login user's own ~/.ssh/config, not $HOME's: it gets the
    # user and port on its command line, resolved like the Paramiko side's.
    target = testbed.host("node-03")
    (home / ".ssh" / "config").write_text(f"Host {target.ip}\n  User skeleton\n")
    data = yaml.safe_load(testbed.config_path.read_text())
    data["ssh"].pop("user", None)
    data["nodes"] = [{"id": "by-ip", "host": target.ip}]
    data["app"] = {"dir": "/home/skeleton/sshcfg-deploy"}
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hi\n")
    data["deploy"] = {"source": str(src)}
    config = _config(tmp_path, data)
    proc = skeleton("cluster", "deploy", config=config, env={"HOME": str(home)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target.home / "sshcfg-deploy" / "hello.txt").read_text() == "hi\n"
    code = ("from skeleton_app.cluster import Cluster\n"
            "with Cluster.from_config(" + repr(str(config)) + ") as c:\n"
            "    print(c.connection(c.nodes[0]).run('whoami', hide=True).stdout.strip())\n")
    fab = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HOME": str(home)}, timeout=60)
    assert fab.stdout.strip() == "skeleton", fab.stdout + fab.stderr
