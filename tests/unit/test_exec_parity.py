"""`exec` as pdsh/clush/Fabric users expect it, over the fake runner: the sudo command lines
(quoting, `-u`, the password only on stdin), who is asked for a password and when, a wrong
password as one line per node, the timeout rules (exec unbounded unless asked, the other
operations bounded), `--stdin` and the password file read on the controller, and the words
after `--`."""

from __future__ import annotations

import dataclasses
import io
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from skeleton_app.app import exec_input
from skeleton_app.app.exec_input import join_words, read_stdin, sudo_password_source
from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings, SSHSettings, load_config
from skeleton_app.errors import NodeError, NodeErrorKind, UsageError
from skeleton_app.nodes import Node
from skeleton_app.ops.run import exec_command
from skeleton_app.ops.sudo import SudoRequest, sudo_command, validate_sudo_user
from skeleton_app.results import NodeResult
from skeleton_app.ssh.runner import RunOptions
from skeleton_app.testing.fake import Call, FakeRunner, Reply

NODES = tuple(Node(id=f"n{i}", host=f"10.0.0.{i}") for i in (1, 2, 3, 4))
_DEFAULT = RunOptions()
SECRET = "s3cret pass'word"
NEEDS_PASSWORD = Reply(1, stderr="sudo: a password is required\n")


class RecordingRunner(FakeRunner):
    """A FakeRunner that also keeps every run's options (timeout, unbounded)."""

    def __init__(self, handler: Any) -> None:
        super().__init__(handler)
        self.options: list[tuple[str, str, RunOptions]] = []

    def run(self, node: Node, command: str, options: RunOptions = _DEFAULT
            ) -> NodeResult[None]:
        self.options.append((node.id, command, options))
        return super().run(node, command, options)


def policy(call: Call) -> Reply | NodeError:
    """n1: NOPASSWD; n2: needs the password and takes SECRET; n3: refuses it; n4: down."""
    if call.node == "n4":
        return NodeError(NodeErrorKind.UNREACHABLE, "no route to host")
    words = shlex.split(call.command.removeprefix("LC_ALL=C "))
    if words[:2] == ["sudo", "-n"] and words[-1] == "true":  # the probe
        return Reply(0) if call.node == "n1" else NEEDS_PASSWORD
    if "-k" in words and words[-1] == "true":  # the password check
        good = call.stdin == (SECRET + "\n").encode() and call.node == "n2"
        return Reply(0) if good else Reply(
            1, stderr="Sorry, try again.\nsudo: no password was provided\n"
                      "sudo: 1 incorrect password attempt\n")
    return Reply(0, stdout="ran\n")


class Asked:
    def __init__(self, password: str = SECRET) -> None:
        self.calls: list[list[str]] = []
        self.password = password

    def __call__(self, nodes: Sequence[str]) -> str:
        self.calls.append(list(nodes))
        return self.password


def test_sudo_command_quotes_the_command_as_one_word_for_sh_c() -> None:
    command = "echo 'a b' | wc -c; echo $HOME"
    token = "ab" * 16
    words = shlex.split(sudo_command(command, None, password=True, token=token))
    assert words[:8] == ["sudo", "-S", "-k", "-p", "", "--", "sh", "-c"]
    # The guard: the command runs as `sh -c COMMAND` only after the token line.
    assert words[9:] == ["sh", command] and token in words[8]
    assert words[8].endswith('exec sh -c "$1"')
    with pytest.raises(ValueError, match="token"):
        sudo_command(command, None, password=True)
    assert shlex.split(sudo_command(command, "postgres", password=False)) == [
        "sudo", "-n", "-u", "postgres", "--", "sh", "-c", command]


@pytest.mark.parametrize("user", ["-x", "a b", "", "root;id", "x\n"])
def test_a_bad_sudo_user_is_a_usage_error(user: str) -> None:
    with pytest.raises(UsageError, match="--sudo-user"):
        validate_sudo_user(user)
    assert validate_sudo_user("#1000") == "#1000" and validate_sudo_user("www-data")


def test_sudo_asks_once_for_the_nodes_that_need_it_and_sends_it_on_stdin_only() -> None:
    runner = RecordingRunner(policy)
    asked = Asked()
    cluster = Cluster(Settings(), NODES, connector=runner)
    result = exec_command(cluster, "id -u", NODES, stdin=b"data\n",
                          sudo=SudoRequest(asked))
    assert asked.calls == [["n2", "n3"]]  # once, and only for those that need it
    ran = {c.node: c for c in runner.calls if c.command.endswith("'id -u'")}
    assert set(ran) == {"n1", "n2"}  # n3 refused the password, n4 is down
    assert ran["n1"].command == "sudo -n -- sh -c 'id -u'" and ran["n1"].stdin == b"data\n"
    words = shlex.split(ran["n2"].command)
    assert words[:8] == ["sudo", "-S", "-k", "-p", "", "--", "sh", "-c"]
    assert words[9:] == ["sh", "id -u"]
    token = ran["n2"].stdin.split(b"\n")[1].decode()
    assert len(token) == 32 and token in words[8]  # a one-time token, read by the guard
    assert ran["n2"].stdin == (SECRET + "\n" + token + "\ndata\n").encode()
    assert all(SECRET not in c.command for c in runner.calls)  # never in a command line
    assert result["n1"].ok and result["n2"].ok
    assert result["n3"].error_kind == NodeErrorKind.LOCAL
    assert result["n3"].summary() == "local: sudo: wrong password"
    assert result["n4"].error_kind == NodeErrorKind.UNREACHABLE
    assert list(result) == ["n1", "n2", "n3", "n4"]
    assert SECRET not in result.to_json()


def test_no_password_is_asked_when_every_node_is_nopasswd() -> None:
    def never(nodes: Sequence[str]) -> str:
        raise AssertionError("asked for a password")

    runner = FakeRunner(lambda call: Reply(0))
    cluster = Cluster(Settings(), NODES[:2], connector=runner)
    result = exec_command(cluster, "true", NODES[:2], sudo=SudoRequest(never, user="app"))
    assert result.exit_code() == 0
    assert runner.commands("n1") == ["LC_ALL=C sudo -n -u app -- sh -c true",
                                     "sudo -n -u app -- sh -c true"]


def test_no_password_to_be_had_stops_before_the_command_runs_anywhere() -> None:
    runner = FakeRunner(policy)
    cluster = Cluster(Settings(), NODES[:2], connector=runner)
    with pytest.raises(UsageError, match="no terminal"):
        exec_command(cluster, "true", NODES[:2],
                     sudo=SudoRequest(sudo_password_source(env={})))
    assert all(c.command.startswith("LC_ALL=C sudo -n") for c in runner.calls)


def test_sudo_missing_or_not_allowed_is_one_line_and_no_password_asked() -> None:
    def node(call: Call) -> Reply:
        if call.node == "n1":
            return Reply(127, stderr="sh: 1: sudo: not found\n")
        return Reply(1, stderr="sudo: user is not in the sudoers file\n")

    cluster = Cluster(Settings(), NODES[:2], connector=FakeRunner(node))
    result = exec_command(cluster, "true", NODES[:2], sudo=SudoRequest(Asked()))
    assert result["n1"].summary() == "local: sudo: not installed on the node"
    assert result["n2"].summary() == "local: sudo: user is not in the sudoers file"
    assert result.exit_code() == 1


def test_an_unknown_sudo_user_is_named_not_the_audit_plugin_line() -> None:
    # What sudo 1.9 prints for `sudo -n -u nosuchuser true` (Debian 12).
    runner = FakeRunner(lambda call: Reply(
        1, stderr="sudo: unknown user nosuchuser\n"
                  "sudo: error initializing audit plugin sudoers_audit\n"))
    cluster = Cluster(Settings(), NODES[:1], connector=runner)
    result = exec_command(cluster, "true", NODES[:1],
                          sudo=SudoRequest(Asked(), user="nosuchuser"))
    assert result["n1"].summary() == "local: sudo: unknown user nosuchuser"
    assert len(runner.calls) == 1  # the probe only: the command ran nowhere


def test_exec_has_no_timeout_unless_asked_and_other_runs_stay_bounded() -> None:
    runner = RecordingRunner(lambda call: Reply(0))
    cluster = Cluster(Settings(), NODES[:1], connector=runner)
    exec_command(cluster, "sleep 1", NODES[:1])
    _, _, options = runner.options[-1]
    assert options.timeout is None and options.unbounded
    exec_command(cluster, "sleep 1", NODES[:1], timeout=7.0)
    assert runner.options[-1][2].timeout == 7.0 and not runner.options[-1][2].unbounded
    configured = dataclasses.replace(Settings(), ssh=SSHSettings(command_timeout=42.0))
    exec_command(Cluster(configured, NODES[:1], connector=runner), "true", NODES[:1])
    assert runner.options[-1][2].timeout == 42.0
    # Cluster.run (the library's other callers) keeps RunOptions' default: bounded.
    cluster.run("true", NODES[:1])
    assert not runner.options[-1][2].unbounded


def test_command_timeout_is_optional_and_op_timeout_stays_bounded(tmp_path: Path) -> None:
    assert SSHSettings().command_timeout is None and SSHSettings().op_timeout == 300.0
    assert SSHSettings(command_timeout=12.5).op_timeout == 12.5
    path = tmp_path / "c.yaml"
    path.write_text("ssh: {command_timeout: null}\n")
    assert load_config(path, env={}).ssh.command_timeout is None
    settings = load_config(path, env={"SKELETON_SSH_COMMAND_TIMEOUT": "60"})
    assert settings.ssh.command_timeout == 60.0 and settings.ssh.op_timeout == 60.0


def test_words_are_joined_as_ssh_and_pdsh_do() -> None:
    assert join_words(["uname", "-r"]) == "uname -r"
    assert join_words(["ls /tmp", "|", "wc", "-l"]) == "ls /tmp | wc -l"
    assert join_words(["uname -r"]) == "uname -r"
    with pytest.raises(UsageError, match="no command"):
        join_words([])


class _Tty(io.BytesIO):
    def isatty(self) -> bool:
        return True


def test_stdin_is_read_whole_bounded_and_never_from_a_terminal() -> None:
    assert read_stdin(io.BytesIO(b"abc"), limit=3) == b"abc"
    with pytest.raises(UsageError, match="more than 3 bytes"):
        read_stdin(io.BytesIO(b"abcd"), limit=3)
    with pytest.raises(UsageError, match="stdin is a terminal"):
        read_stdin(_Tty(b"x"))


def test_a_closed_stdin_is_one_usage_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # `skeleton cluster exec --stdin -- wc -c <&-`: Python starts with sys.stdin = None.
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(UsageError, match="stdin is closed"):
        read_stdin()
    closed = io.BytesIO(b"x")
    closed.close()
    with pytest.raises(UsageError, match="stdin is closed"):
        read_stdin(closed)


def test_stdin_is_closed_end_to_end(tmp_path: Path) -> None:
    """The real CLI with fd 0 closed: exit 2 and one line (was a traceback), before any
    node is contacted (the config's one node could not answer anyway)."""
    config = tmp_path / "config.yaml"
    config.write_text("nodes:\n  - {id: n1, host: 127.0.0.1, port: 1}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "skeleton_app", "cluster", "exec", "--config", str(config),
         "--stdin", "--", "wc", "-c"],
        stdin=None, capture_output=True, text=True, timeout=60, check=False,
        preexec_fn=lambda: os.close(0))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "skeleton: error: --stdin: stdin is closed (pipe or redirect the input)"]


def test_the_password_file_is_read_once_without_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    source = sudo_password_source(env={exec_input.PASSWORD_FILE_ENV: str(path)})
    assert source(["n1"]) == SECRET
    path.unlink()
    assert source(["n2"]) == SECRET  # asked once per command
    for content, error in (("", "is empty"), ("a\nb\n", "more than one line")):
        path.write_text(content)
        path.chmod(0o600)
        with pytest.raises(UsageError, match=error):
            sudo_password_source(env={exec_input.PASSWORD_FILE_ENV: str(path)})(["n1"])
    with pytest.raises(UsageError, match="cannot read"):
        sudo_password_source(env={exec_input.PASSWORD_FILE_ENV: str(tmp_path / "no")})(["n1"])


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_password_file_other_users_may_read_or_write_is_refused(tmp_path: Path,
                                                                  mode: int) -> None:
    path = tmp_path / "pw"
    path.write_text(SECRET + "\n")
    path.chmod(mode)
    with pytest.raises(UsageError, match=f"accessible by other users \\(mode 0{mode:o}\\)"
                                         ": chmod 600"):
        sudo_password_source(env={exec_input.PASSWORD_FILE_ENV: str(path)})(["n1"])
    path.chmod(0o400)
    assert sudo_password_source(env={exec_input.PASSWORD_FILE_ENV: str(path)})(["n1"]) == SECRET
    # A pipe (`SKELETON_SUDO_PASSWORD_FILE=<(pass show sudo)`) has no file mode to judge.
    read_fd, write_fd = os.pipe()
    os.write(write_fd, SECRET.encode() + b"\n")
    os.close(write_fd)
    try:
        env = {exec_input.PASSWORD_FILE_ENV: f"/dev/fd/{read_fd}"}
        assert sudo_password_source(env=env)(["n1"]) == SECRET
    finally:
        os.close(read_fd)


def test_no_terminal_and_no_file_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exec_input, "_has_terminal", lambda: False)
    with pytest.raises(UsageError, match=r"n\[1-2\] need a sudo password and there is no"):
        sudo_password_source(env={})(["n1", "n2"])


@pytest.mark.parametrize(("args", "message"), [
    (["--sudo-user", "x", "--", "true"], "--sudo-user needs --sudo"),
    (["--sudo", "--sudo-user", "-x", "--", "true"], "--sudo-user: expected"),
    (["--", " "], "no command given"),
    # pdsh's `uname -r` without `--`: -r is read as an option of ours
    (["uname", "-r"], "No such option '-r'. The command's own options go after `--`"),
])
def test_cli_bad_exec_input_exits_2_before_connecting(tmp_path: Path, args: list[str],
                                                      message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("nodes:\n - {id: a, host: 10.255.255.1}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "skeleton_app", "cluster", "exec", "--config", str(path), *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stdout == ""
    assert proc.stderr.startswith("skeleton: error: ") and proc.stderr.count("\n") == 1
