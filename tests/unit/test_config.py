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
        # every float setting is finite (NaN passed `<= 0`, inf overflowed every timeout)
        ("ssh: {connect_timeout: .nan}\n", "ssh.connect_timeout: expected a finite number"),
        ("ssh: {connect_timeout: .inf}\n", "ssh.connect_timeout: expected a finite number"),
        ("ssh: {command_timeout: -.inf}\n", "ssh.command_timeout: expected a finite number"),
        ("ssh: {keepalive: 1.0e+12}\n", "ssh.keepalive: expected a finite number"),
        ("registry: {stale_after: .nan}\n", "registry.stale_after: expected a finite"),
        ("registry: {connect_timeout: .inf}\n", "registry.connect_timeout: expected a finite"),
        ("daemon: {stop_grace: .nan}\n", "daemon.stop_grace: expected a finite number"),
        ("daemon: {start_grace: .inf}\n", "daemon.start_grace: expected a finite number"),
        # a wrong type anywhere is one line, never a traceback
        ("nodes:\n - {id: a, host: 10.0.0.1, app_dir: 5}\n",
         "nodes[a]: app_dir: expected a string, got 5"),
        ("nodes:\n - {id: a, host: 10.0.0.1, name: [x]}\n", "nodes[a]: name: expected a string"),
        ("nodes:\n - {id: a, host: 10.0.0.1, identity_file: 7}\n",
         "nodes[a]: identity_file: expected a string"),
        ("nodes:\n - {id: a, host: 10.0.0.1, roles: 5}\n", "roles: expected a list"),
        ("nodes:\n - {id: a, host: 10.0.0.1, user: 5}\n", "nodes[a]: invalid user 5"),
        ("nodes:\n - {id: a, host: 10.0.0.1, api_port: x}\n", "nodes[a]: invalid port 'x'"),
        ("nodes:\n - {id: 5, host: 10.0.0.1}\n", "node id must be a string"),
        ("nodes:\n - {id: a, host: [1]}\n", "nodes[a]: host must be a non-empty string"),
        ("app: {dir: 5}\n", "app.dir: expected a string, got 5"),
        ("deploy: {after: [1]}\n", "deploy.after: expected a list of strings"),
        # rsync would obey a filter-rule prefix that the deploy digest would not
        ("deploy: {exclude: ['+ x/m.py', 'x/*']}\n", "deploy.exclude: '+ x/m.py' starts with"),
        ("deploy: {exclude: ['- secret']}\n", "'- secret' starts with an rsync filter rule"),
        ("deploy: {exclude: ['P keep/']}\n", "'P keep/' starts with an rsync filter rule"),
        ("deploy: {exclude: ['R x']}\n", "'R x' starts with"),
        ("deploy: {exclude: ['H x', 'S y']}\n", "'H x' starts with"),
        ("deploy: {exclude: ['-/ x']}\n", "'-/ x' starts with"),
        ("deploy: {exclude: ['include x']}\n", "'include x' starts with"),
        ("deploy: {exclude: ['exclude,/ x']}\n", "'exclude,/ x' starts with"),
        ("deploy: {exclude: ['merge .rules']}\n", "'merge .rules' starts with"),
        ("deploy: {exclude: ['. .rules']}\n", "'. .rules' starts with"),
        ("deploy: {exclude: ['!']}\n", "'!' starts with"),
        # groups: names like roles, members valid selections without @
        ("groups: [a]\n", "groups: expected a mapping of group name to nodes"),
        ("groups: {'a b': x}\n", "groups: invalid group name 'a b'"),
        ("groups: {gpu: 5}\n", "groups.gpu: expected a node selection or a list"),
        ("groups: {gpu: []}\n", "groups.gpu: expected a node selection or a list"),
        ("groups: {gpu: ''}\n", "groups.gpu: node selection '': empty selection"),
        ("groups: {gpu: 'a,,b'}\n", "groups.gpu: node selection 'a,,b': empty element"),
        ("groups: {gpu: 'a!b'}\n", "groups.gpu: node selection 'a!b': invalid node selection"),
        ("groups: {gpu: '@stt'}\n", "groups.gpu: a group's members are nodes, not @groups"),
        ("groups: {gpu: [a, '@edge']}\n", "groups.gpu: a group's members are nodes"),
        ("grops: {gpu: a}\n", "grops: unknown section (valid: ssh, app, registry, deploy,"),
        # YAML aliases: a self-reference is refused (a bomb: test_alias_bomb_...)
        ("ssh: &a {user: *a}\n", "an alias refers to the value that contains it"),
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


@pytest.mark.parametrize(("var", "value"), [
    ("SKELETON_SSH_CONNECT_TIMEOUT", "nan"), ("SKELETON_SSH_CONNECT_TIMEOUT", "inf"),
    ("SKELETON_SSH_COMMAND_TIMEOUT", "1e999"), ("SKELETON_REGISTRY_STALE_AFTER", "NaN"),
    ("SKELETON_DAEMON_STOP_GRACE", "-inf")])
def test_env_seconds_must_be_finite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    var: str, value: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"^{var}: \w+\.\w+: expected a finite number"):
        load_config(None, env={var: value})


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"ssh: {user: caf\xe9}\n")
    with pytest.raises(ConfigError, match=r": not UTF-8 text \(byte 0xe9 at offset 15\)$"):
        load_config(path, env={})


@pytest.mark.slow  # parses a 2 MiB and a 20000-deep file: 2-6 s
def test_config_file_too_large_or_too_deep(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_config(big, env={})
    deep = tmp_path / "deep.yaml"
    deep.write_text("ssh: {user: " + "[" * 20000 + "]" * 20000 + "}\n")
    with pytest.raises(ConfigError, match=str(deep)):
        load_config(deep, env={})


def test_groups_and_ordinary_anchors_load(tmp_path: Path) -> None:
    path = write(tmp_path, """
nodes:
  - &first {id: linux-01, host: 10.0.0.1, roles: [stt], port: 2222}
  - {<<: *first, id: linux-02, host: 10.0.0.2}
groups: {gpu: "linux-[01-02]", edge: [linux-02, "linux-0[1-2]"]}
""")
    s = load_config(path, env={})
    assert [(n.id, n.roles, n.port) for n in s.nodes] == [
        ("linux-01", ("stt",), 2222), ("linux-02", ("stt",), 2222)]
    assert s.groups == (("gpu", ("linux-[01-02]",)), ("edge", ("linux-02", "linux-0[1-2]")))


def test_missing_identity_file_is_a_config_error_before_anything_runs(
        tmp_path: Path) -> None:
    """Refused where the controller starts (Cluster.from_config), not in load_config: the
    node daemons read the same file and do not have the controller's key."""
    from skeleton_app.cluster import Cluster

    key = tmp_path / "id_test"
    path = write(tmp_path, f"ssh: {{identity_file: {key}}}\n"
                           "nodes:\n - {id: a, host: 10.0.0.1}\n")
    assert load_config(path, env={}).ssh.identity_file == str(key)
    with pytest.raises(ConfigError, match=rf"^{path}: ssh\.identity_file: no such file '{key}'$"):
        Cluster.from_config(path, env={})
    key.write_text("not really a key, but it exists\n")
    Cluster.from_config(path, env={}).close()
    other = tmp_path / "id_other"
    path.write_text(f"ssh: {{identity_file: {key}}}\n"
                    f"nodes:\n - {{id: a, host: 10.0.0.1, identity_file: {other}}}\n")
    with pytest.raises(ConfigError, match=r"nodes\[a\]\.identity_file: no such file"):
        Cluster.from_config(path, env={})
    with pytest.raises(ConfigError, match=r"^SKELETON_SSH_IDENTITY_FILE: ssh\.identity_file"):
        Cluster.from_config(path, env={"SKELETON_SSH_IDENTITY_FILE": str(other)})


# The anchors live inside a valid key, so that nothing else stops the load first: the
# old loader then repr()'d the 9**9 = 387,420,489 strings of the value for its error.
BOMB = "logs:\n  files: [\n" + ",\n".join([
    '    &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    *(f"    &{n} [{','.join(['*' + p] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi",
                                                              strict=True)),
]) + "]\n"
RSS_PROBE = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120)
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(proc.returncode, peak_kib)
sys.stderr.write(proc.stderr)
"""


def test_alias_bomb_is_refused_with_little_memory(tmp_path: Path) -> None:
    """The "billion laughs" in a config value reached 1.58 GB and a MemoryError traceback:
    it is refused while loading, in one line, and the CLI's peak RSS stays small."""
    path = write(tmp_path, BOMB)
    probe = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, sys.executable, "-m", "skeleton_app", "cluster",
         "exec", "true", "--config", str(path)], capture_output=True, text=True, timeout=180)
    code, peak_kib = probe.stdout.split()
    assert code == "2", probe.stderr
    lines = probe.stderr.strip().splitlines()
    assert lines == [f"skeleton: error: {path}: invalid YAML: aliases expand to more than"
                     " 4 MiB of values"]
    assert int(peak_kib) < 200 * 1024, f"peak RSS {int(peak_kib) // 1024} MiB"


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", env={})


def test_committed_config_yaml_is_valid_and_has_no_nodes() -> None:
    """The example config loads, and never points at the guide's real LAN."""
    root = Path(__file__).resolve().parents[2]
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


@pytest.mark.parametrize(("args", "flag"), [
    (["cluster", "exec", "true", "--timeout", "nan"], "--timeout"),
    (["cluster", "exec", "true", "--timeout", "inf"], "--timeout"),
    (["cluster", "exec", "true", "--timeout", "0"], "--timeout"),
    (["cluster", "deploy", "--lock-wait", "nan"], "--lock-wait"),
    (["cluster", "daemon", "restart", "--health-timeout", "1e999"], "--health-timeout"),
])
def test_cli_seconds_flags_must_be_finite(tmp_path: Path, args: list[str], flag: str) -> None:
    """Flags in seconds follow the config's rule (click's FloatRange let `nan` through)."""
    path = write(tmp_path, "nodes:\n - {id: a, host: 10.0.0.1}\n")
    proc = subprocess.run([sys.executable, "-m", "skeleton_app", *args, "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"Invalid value for '{flag}': expected a number of seconds" in proc.stderr
    assert proc.stdout == ""
