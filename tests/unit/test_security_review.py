"""Attacks from the #15 security review that need no host: each test is an attack that once
worked, kept so it never works again.

- `cluster fetch`: a node that sends its files mode 0777 left world-writable files on this
  machine (the extractor set the node's bits as they came, past the user's umask).
- `--node @failed`: a node "id" in the state file (or the journal) that is an escape
  sequence reached the terminal raw in the error that names it.
- `cluster fetch` (and sync-models manifests): a name holding a C1 control (U+009B, CSI to
  many terminals) was written to disk as sent.
- `RunOptions` (the sudo run's stdin starts with the password) showed its stdin in repr.
- `runs retry` of an `exec --sudo [--sudo-user U]` run ran the command without sudo, as the
  login user (root by default) instead of U; an `exec --stdin` run without its input.
- the state file: read through a symlink, or from a directory another user may write; and
  `runs retry last` runs the command it records.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from skeleton_app.app import retry
from skeleton_app.app.last_run import NodeOutcome, PastRun, read_state, write_state
from skeleton_app.errors import SelectionError, UsageError
from skeleton_app.nodes import Node, select
from skeleton_app.ops.fetch_extract import (
    NodeTree,
    Refused,
    TarExtractor,
    open_node_dir,
    process_umask,
)
from skeleton_app.ops.sudo import SudoPlan
from skeleton_app.safepath import name_problem
from skeleton_app.ssh.runner import RunOptions
from tests.support.helpers import REPO


def _tar(name: str, data: bytes, mode: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.mode, info.size = mode, len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_the_umask_is_read_without_being_changed() -> None:
    old = os.umask(0o027)
    try:
        assert process_umask() == 0o027
        assert os.umask(0o027) == 0o027  # unchanged by the read
    finally:
        os.umask(old)


@pytest.mark.parametrize(("sent", "umask", "kept"), [
    (0o777, 0o022, 0o755), (0o666, 0o022, 0o644), (0o6777, 0o077, 0o700),
    (0o640, 0o022, 0o640), (0o775, 0o002, 0o775),
])
def test_a_node_cannot_leave_files_here_more_open_than_the_umask(
        tmp_path: Path, sent: int, umask: int, kept: int) -> None:
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    node_fd = open_node_dir(root_fd, "node-01")
    tree = NodeTree(node_fd)
    try:
        ex = TarExtractor(tree, ["app"], umask=umask)
        ex.feed(_tar("app", b"#!/bin/sh\n", sent))
        ex.close()
    finally:
        tree.close()
        os.close(node_fd)
        os.close(root_fd)
    assert stat.S_IMODE((tmp_path / "node-01" / "app").stat().st_mode) == kept


HOSTILE = "\x1b]0;PWNED\x07evil[1-9999999]"


def test_failed_ids_that_are_not_ids_are_named_quoted_never_raw() -> None:
    nodes = [Node(id="a", host="10.0.0.1")]
    with pytest.raises(SelectionError) as caught:
        select(nodes, ["@failed"], failed=[HOSTILE, "a"])
    message = str(caught.value)
    assert "\x1b" not in message and "\\x1b]0;PWNED" in message
    assert "which is not a node id" in message
    assert select(nodes, ["@failed"], failed=["a"]) == (nodes[0],)
    with pytest.raises(SelectionError, match="no longer a node"):
        select(nodes, ["@failed"], failed=["b"])


def test_a_hostile_state_file_never_reaches_the_terminal_raw(tmp_path: Path) -> None:
    (tmp_path / "skeleton").mkdir()
    (tmp_path / "skeleton" / "last-run.json").write_text(json.dumps({
        "format": 1, "operation": "exec", "arguments": {},
        "started_at": "2026-01-01T00:00:00+00:00",
        "nodes": {HOSTILE: {"exit_code": 1, "error_kind": None},
                  "a": {"exit_code": 1, "error_kind": None}}}))
    config = tmp_path / "c.yaml"
    config.write_text("nodes:\n - {id: a, host: 10.255.255.1}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    env["XDG_STATE_HOME"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "skeleton_app", "cluster", "exec", "--config", str(config),
         "--node", "@failed", "--list-hosts", "--", "true"], capture_output=True, text=True,
        timeout=60, env=env, cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert "\x1b" not in proc.stdout + proc.stderr
    assert "which is not a node id" in proc.stderr


def test_the_state_file_is_read_only_when_no_other_user_could_have_written_it(
        tmp_path: Path) -> None:
    run = PastRun("exec", {"command": "true"}, datetime(2026, 1, 2, tzinfo=UTC), {})
    home = tmp_path / "skeleton"
    path = write_state(run, home)
    assert read_state(home) is not None
    home.chmod(0o777)  # a shared XDG_STATE_HOME: anyone may swap the file
    with pytest.raises(UsageError, match="may be written by another user: not used"):
        read_state(home)
    home.chmod(0o700)
    path.chmod(0o666)
    with pytest.raises(UsageError, match="writable by other users: not used"):
        read_state(home)
    path.chmod(0o600)
    elsewhere = tmp_path / "planted.json"
    elsewhere.write_text(run.to_json().replace('"true"', '"rm -rf ~"'))
    path.unlink()
    path.symlink_to(elsewhere)
    with pytest.raises(UsageError, match="a symlink is never followed"):
        read_state(home)
    if os.geteuid() == 0:  # only root can give a file away
        path.unlink()
        write_state(run, home)
        os.chown(path, 65534, 65534)
        with pytest.raises(UsageError, match="owned by uid 65534, not by you"):
            read_state(home)


@pytest.mark.parametrize("name", ["app/a\u009b31mX", "app/\u0085x", "app/x\x7f"])
def test_a_name_with_a_c1_control_is_refused(tmp_path: Path, name: str) -> None:
    assert name_problem(name) == "a control character (NUL, newline, ...)"
    assert name_problem("app/caf\u00e9 \u00a0x") is None  # printable Latin-1 is a name
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    node_fd = open_node_dir(root_fd, "node-01")
    tree = NodeTree(node_fd)
    try:
        ex = TarExtractor(tree, ["app"], umask=0o022)
        with pytest.raises(Refused, match="a control character"):
            ex.feed(_tar(name, b"x", 0o644))
    finally:
        tree.close()
        os.close(node_fd)
        os.close(root_fd)
    assert list((tmp_path / "node-01").iterdir()) == []


def test_the_sudo_password_is_not_in_the_run_options_repr() -> None:
    options = SudoPlan((), (), (), password="Hunter2-repr").options(RunOptions(stdin=b"x"))
    assert options.stdin is not None and options.stdin.startswith(b"Hunter2-repr\n")
    assert "Hunter2" not in repr(options) and "Hunter2" not in str(options)


def _retry_exec(monkeypatch: pytest.MonkeyPatch, arguments: dict[str, object]
                ) -> dict[str, object]:
    seen: dict[str, object] = {}

    def fake_exec(_session: object, nodes: object, command: str, **kw: object) -> str:
        seen.update(kw, command=command)
        return "done"

    monkeypatch.setattr(retry.commands, "exec_command", fake_exec)
    run = PastRun("exec", arguments, datetime(2026, 1, 2, tzinfo=UTC),
                  {"a": NodeOutcome(1, None)})
    retry.run(object(), retry.RetryPlan(run, ()))  # type: ignore[arg-type]
    return seen


def test_retry_of_a_sudo_run_keeps_sudo_and_its_user(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _retry_exec(monkeypatch, {"command": "psql -c 'select 1'", "timeout": None,
                                     "sudo": True, "sudo_user": "postgres"})
    sudo = seen["sudo"]
    assert sudo is not None and getattr(sudo, "user", None) == "postgres"
    assert _retry_exec(monkeypatch, {"command": "id -u"})["sudo"] is None
    with pytest.raises(UsageError, match="--sudo-user: expected"):
        _retry_exec(monkeypatch, {"command": "id", "sudo": True, "sudo_user": "-x;id"})
    with pytest.raises(UsageError, match="exec --stdin cannot be retried"):
        _retry_exec(monkeypatch, {"command": "tar x", "stdin_bytes": 10})
