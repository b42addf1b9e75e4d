"""Configuration: layering and every bad-config case (one clear line, exit code 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from skeleton_app.config import load_config
from skeleton_app.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


GOOD = """
ssh: {user: sysadmin, port: 22, connect_timeout: 7, fanout: 16}
app: {dir: /srv/skeleton, models_dir: models, logs_dir: /var/log/skeleton}
nodes:
  - {id: linux-01, host: 10.0.0.1, roles: [stt_realtime, tts]}
  - {id: linux-02, host: node2.example, port: 2222, user: other, app_dir: /opt/app}
  - {id: win-main, host: "fd00::5", roles: [gpu]}
"""


def test_file_values_and_node_defaults(tmp_path: Path) -> None:
    s = load_config(write(tmp_path, GOOD), env={})
    assert s.ssh.user == "sysadmin" and s.ssh.connect_timeout == 7.0 and s.ssh.fanout == 16
    n1, n2, n3 = s.nodes
    assert (n1.id, n1.port, n1.user, n1.app_dir, n1.roles) == (
        "linux-01", 22, "sysadmin", "/srv/skeleton", ("stt_realtime", "tts"))
    assert (n2.port, n2.user, n2.app_dir) == (2222, "other", "/opt/app")
    assert n3.host == "fd00::5"
    # relative models_dir is under the node's app dir, absolute logs_dir stays
    assert s.models_dir_for(n2) == "/opt/app/models"
    assert s.logs_dir_for(n1) == "/var/log/skeleton"
    with pytest.raises(AttributeError):
        s.ssh.user = "x"  # type: ignore[misc]


def test_precedence_defaults_file_env_flags(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml here: pure defaults
    defaults = load_config(None, env={})
    assert defaults.ssh.connect_timeout == 10.0 and defaults.source is None
    path = write(tmp_path, "ssh: {connect_timeout: 7, fanout: 16, user: fileuser}\n")
    env = {"SKELETON_SSH_CONNECT_TIMEOUT": "3", "SKELETON_SSH_USER": "envuser",
           "SKELETON_DATABASE_URL": "postgresql://x@127.0.0.1/db"}
    s = load_config(path, env=env, overrides={"ssh.fanout": 4})
    assert s.ssh.connect_timeout == 3.0  # env beats file
    assert s.ssh.user == "envuser"
    assert s.ssh.fanout == 4  # flag beats file
    assert s.registry.dsn == "postgresql://x@127.0.0.1/db"
    s2 = load_config(None, env={"SKELETON_CONFIG": str(path)})
    assert s2.ssh.user == "fileuser" and s2.source == str(path)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("ssh: {usr: x}\n", "ssh.usr: unknown key"),
        ("bogus: {}\n", "bogus: unknown section"),
        ("ssh: {port: abc}\n", "ssh.port: expected an integer"),
        ("ssh: {connect_timeout: -1}\n", "ssh.connect_timeout: expected a positive number"),
        ("ssh: {command_timeout: 0}\n", "ssh.command_timeout: expected a positive number"),
        ("ssh: {host_key_policy: yolo}\n", "ssh.host_key_policy: expected 'strict' or"),
        ("ssh: {port: 70000}\n", "ssh.port: invalid port 70000"),
        ("deploy: {exclude: .git}\n", "deploy.exclude: expected a list of strings"),
        ("logs: {lines: -5}\n", "logs.lines: expected zero or more"),
        ("app: {dir: relative/path}\n", "app.dir: expected an absolute path"),
        ("nodes:\n - {id: a, host: 10.0.0.1}\n - {id: a, host: 10.0.0.2}\n",
         "nodes[a]: duplicate node id 'a'"),
        ("nodes:\n - {id: '../../etc/x', host: 10.0.0.1}\n", "nodes[0].id: invalid node id"),
        ("nodes:\n - {id: 'a;reboot', host: 10.0.0.1}\n", "invalid node id 'a;reboot'"),
        ("nodes:\n - {id: a, host: '-oProxyCommand=touch /tmp/x'}\n", "nodes[a]: invalid host"),
        ("nodes:\n - {id: a, host: 999.1.1.1}\n", "not a valid IPv4 address"),
        ("nodes:\n - {id: a, host: 10.0.0.1, port: 0}\n", "nodes[a]: invalid port 0"),
        ("nodes:\n - {id: a, host: 10.0.0.1, roles: ['$(id)']}\n", "invalid role '$(id)'"),
        ("nodes:\n - {id: a}\n", "nodes[0]: missing 'host'"),
        ("nodes:\n - {id: a, host: h, colour: red}\n", "unknown key 'colour'"),
        ("nodes: {a: 1}\n", "nodes: expected a list"),
        ("ssh: [1, 2]\n", "ssh: expected a mapping"),
        ("ssh: {user: [unclosed\n", "invalid YAML"),
        ("- just\n- a list\n", "expected a mapping of sections"),
    ],
)
def test_bad_config_names_file_key_and_expectation(tmp_path: Path, text: str,
                                                   needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert needle in message
    assert message.startswith(str(path))
    assert "\n" not in message


def test_bad_env_value_names_the_variable(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"SKELETON_SSH_FANOUT: ssh\.fanout: expected an integer"):
        load_config(None, env={"SKELETON_SSH_FANOUT": "many"})
    with pytest.raises(ConfigError, match=r"SKELETON_SSH_CONNECT_TIMEOUT: .*positive"):
        load_config(None, env={"SKELETON_SSH_CONNECT_TIMEOUT": "-2"})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", env={})


def test_committed_config_yaml_is_valid_and_has_no_nodes() -> None:
    """The example config loads, and never points at the guide's real LAN."""
    root = Path(__file__).resolve().parents[1]
    s = load_config(root / "config.yaml", env={})
    assert s.nodes == ()
    assert "192.168.32" not in "".join(
        line for line in (root / "config.yaml").read_text().splitlines()
        if not line.lstrip().startswith("#"))


@pytest.mark.parametrize("args", [["cluster", "exec", "true"], ["cluster", "status"]])
def test_cli_bad_config_exits_2_and_runs_nothing(tmp_path: Path, args: list[str]) -> None:
    path = write(tmp_path, "ssh: {connect_timeout: -1}\nnodes:\n - {id: a, host: 10.0.0.1}\n")
    proc = subprocess.run([sys.executable, "-m", "skeleton_app", *args, "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0] and "ssh.connect_timeout" in lines[0]
    assert proc.stdout == ""
