"""`exec` as clush/pdsh/Fabric users expect it, on real sshd hosts: words after `--`,
`--stdin` to every node, `--sudo` with and without a password (terminal, password file,
wrong password, none to be had), the password never in a command line, the output or the
run journal, and no command timeout on ad-hoc work while a dead node is still detected.

The sudo tests give the hosts' login user a sudoers drop-in and a password
(`testbed/sudoers.py`, recorded in the state dir, removed after the test and by `down`):
node-01 is NOPASSWD, the other hosts need the password."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psycopg
import pytest

from skeleton_app.testing import testbed as tb
from skeleton_app.testing.testbed import Testbed
from skeleton_app.testing.testbed.sudoers import sudo_rules
from tests.support.frontends import fab, out, run_tool
from tests.support.helpers import REPO, config_variant

# The login user's password is the machine's (sudo_rules): one worker runs these modules.
pytestmark = pytest.mark.xdist_group("sudo")
SECRET = "Tr0ub4dor&3 'x\" $y"  # quotes, spaces and $ must all reach sudo as typed
PASSWORD_ENV = "SKELETON_SUDO_PASSWORD_FILE"


def run_cli(*args: str, config: Path, input: bytes | None = None,
            env: dict[str, str] | None = None, timeout: float = 120,
            stdin: int | None = None) -> subprocess.CompletedProcess[str]:
    """`skeleton cluster exec --config C ARGS...` without a controlling terminal (a new
    session: /dev/tty cannot be opened), as from cron or CI. The config comes first: after
    `--` every word is the command's."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "skeleton_app", "cluster", "exec", "--config", str(config),
         *args], input=input, capture_output=True, timeout=timeout, env=full_env, cwd=REPO,
        start_new_session=True, stdin=stdin if input is None else None)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode("utf-8", "replace"),
                                       proc.stderr.decode("utf-8", "replace"))


@pytest.fixture
def sudo_bed(testbed: Testbed) -> Iterator[Testbed]:
    with sudo_rules(testbed, SECRET, nopasswd=["node-01"]):
        yield testbed


@pytest.fixture
def password_file(tmp_path: Path) -> Callable[[str], dict[str, str]]:
    def make(text: str) -> dict[str, str]:
        path = tmp_path / f"pw-{uuid.uuid4().hex[:8]}"
        path.write_text(text + "\n")
        path.chmod(0o600)
        return {PASSWORD_ENV: str(path)}
    return make


# ---------------------------------------------------------------- words and stdin


def test_words_after_double_dash_are_joined_as_ssh_does(testbed: Testbed) -> None:
    cfg = testbed.config_path
    words = run_cli("--node", "node-0[1-2]", "--", "echo", "a  b", "|", "tr", "ab", "AB",
                    config=cfg, stdin=subprocess.DEVNULL)
    assert words.returncode == 0, out(words)
    # Joined with single spaces, then parsed by the node's shell: "a  b" lost its quotes.
    assert "---------------- node-[01-02] ----------------\nA B\n" in words.stdout
    one = run_cli("--node", "node-01", "uname -r", config=cfg, stdin=subprocess.DEVNULL)
    split = run_cli("--node", "node-01", "--", "uname", "-r", config=cfg,
                    stdin=subprocess.DEVNULL)
    assert one.returncode == split.returncode == 0 and one.stdout == split.stdout
    # After `--`, an option is the command's: `--json` here is echoed by the node.
    echoed = run_cli("--node", "node-01", "--", "echo", "--json", config=cfg,
                     stdin=subprocess.DEVNULL)
    assert echoed.returncode == 0 and "\n--json\n" in echoed.stdout, out(echoed)
    # inv: the words after `--` too (so `--config` goes before them).
    by_inv = run_tool("inv", "exec", "--config", str(cfg), "--node", "node-02", "--",
                      "uname", "-r")
    assert by_inv.returncode == 0, out(by_inv)
    assert by_inv.stdout.splitlines()[1:] == one.stdout.splitlines()[1:]


def test_stdin_reaches_every_node(testbed: Testbed) -> None:
    data = os.urandom(3 * 1024 * 1024) + b"\nend\n"  # above what is sent before reading
    digest = hashlib.sha256(data).hexdigest()
    proc = run_cli("--stdin", "--json", "--node", "node-0[1-3]", "--",
                   'printf "%s " "$(hostname)"; sha256sum', config=testbed.config_path,
                   input=data)
    assert proc.returncode == 0, out(proc)
    results = json.loads(proc.stdout)["nodes"]
    for host in ("node-01", "node-02", "node-03"):
        assert results[host]["stdout"] == f"{host} {digest}  -\n"
    # A command that never reads its stdin still succeeds, however large the input.
    ignored = run_cli("--stdin", "--node", "node-0[1-3]", "--", "true",
                      config=testbed.config_path, input=data)
    assert ignored.returncode == 0, out(ignored)
    by_fab = subprocess.run(
        [str(Path(sys.executable).parent / "fab"), "-H", "node-02", "run", "--stdin",
         "--command", "tr a-z A-Z"], input=b"from fab\n", capture_output=True, cwd=REPO,
        env={**os.environ, "SKELETON_CONFIG": str(testbed.config_path)}, timeout=120)
    assert by_fab.returncode == 0 and b"FROM FAB\n" in by_fab.stdout, by_fab
    # fab runs the task host by host: every host gets the same bytes (the second got none)
    by_fab = subprocess.run(
        [str(Path(sys.executable).parent / "fab"), "-H", "node-01,node-[02-03]", "run",
         "--stdin", "--command", 'printf "%s " "$(hostname)"; sha256sum'], input=data,
        capture_output=True, cwd=REPO, timeout=120,
        env={**os.environ, "SKELETON_CONFIG": str(testbed.config_path)})
    assert by_fab.returncode == 0, by_fab
    for host in ("node-01", "node-02", "node-03"):
        assert f"{host} {digest}  -\n".encode() in by_fab.stdout, by_fab.stdout


def test_stdin_from_a_terminal_or_over_the_limit_is_refused(testbed: Testbed,
                                                           tmp_path: Path) -> None:
    parent, child = pty.openpty()
    try:
        proc = run_cli("--stdin", "--", "true", config=testbed.config_path, stdin=child)
    finally:
        os.close(parent)
        os.close(child)
    assert proc.returncode == 2 and "stdin is a terminal" in proc.stderr, out(proc)
    big = tmp_path / "big"
    with open(big, "wb") as fh:
        fh.truncate(64 * 1024 * 1024 + 1)
    with open(big, "rb") as fh:
        proc = run_cli("--stdin", "--", "true", config=testbed.config_path, stdin=fh.fileno())
    assert proc.returncode == 2 and "more than 67108864 bytes" in proc.stderr, out(proc)
    assert proc.stdout == ""


# ---------------------------------------------------------------- sudo


def test_sudo_with_a_password_file_and_nopasswd(
        sudo_bed: Testbed, password_file: Callable[[str], dict[str, str]]) -> None:
    cfg = sudo_bed.config_path
    proc = run_cli("--sudo", "--node", "node-0[1-3]", "--", "id", "-u",
                   config=cfg, env=password_file(SECRET), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, out(proc)
    assert "---------------- node-[01-03] ----------------\n0\n" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr
    as_user = run_cli("--sudo", "--sudo-user", "nobody", "--node", "node-0[1-2]", "--",
                      "id -un; pwd", config=cfg, env=password_file(SECRET),
                      stdin=subprocess.DEVNULL)
    assert as_user.returncode == 0, out(as_user)
    assert "---------------- node-[01-02] ----------------\nnobody\n" in as_user.stdout
    # NOPASSWD only: no password is needed, so none is asked (there is no terminal here).
    free = run_cli("--sudo", "--node", "node-01", "--", "id", "-u", config=cfg,
                   stdin=subprocess.DEVNULL)
    assert free.returncode == 0 and "\n0\n" in free.stdout, out(free)
    by_inv = subprocess.run(
        [str(Path(sys.executable).parent / "inv"), "exec", "--sudo", "--node", "node-02",
         "--command", "id -u", "--config", str(cfg)], capture_output=True, text=True,
        cwd=REPO, env={**os.environ, **password_file(SECRET)}, timeout=120,
        stdin=subprocess.DEVNULL, start_new_session=True)
    assert by_inv.returncode == 0 and "\n0\n" in by_inv.stdout, out(by_inv)
    by_fab = fab("-H", "node-01", "run", "--sudo", "--command", "id -u", config=cfg)
    assert by_fab.returncode == 0 and "\n0\n" in by_fab.stdout, out(by_fab)


def test_sudo_password_typed_on_the_terminal_with_stdin(sudo_bed: Testbed,
                                                        tmp_path: Path) -> None:
    feed = tmp_path / "feed"
    feed.write_text("payload line\n")
    cmd = (f"{sys.executable} -m skeleton_app cluster exec --config {sudo_bed.config_path}"
           f" --stdin --sudo --node 'node-0[1-3]' -- 'cat; id -u' < {feed}")
    code, shown = run_on_terminal(["/bin/sh", "-c", cmd], SECRET)
    assert code == 0, shown
    assert shown.count("password") == 1  # asked once, for the nodes that need it
    assert "[sudo] password on node-[02-03]:" in shown
    # The password line went to sudo, not to the command: each node printed only the feed.
    assert "---------------- node-[01-03] ----------------\r\npayload line\r\n0\r\n" in shown
    assert SECRET not in shown  # not echoed


def run_on_terminal(argv: Sequence[str], answer: str) -> tuple[int, str]:
    """`argv` with a pseudo-terminal as its controlling terminal; `answer` is typed at the
    first password prompt. Returns (exit code, everything the terminal showed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execve(argv[0], list(argv), env)
    shown = b""
    typed = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if not typed and b"password" in shown:
                os.write(fd, answer.encode() + b"\n")
                typed = True
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode("utf-8", "replace")


def test_sudo_wrong_password_is_one_line_per_node(
        sudo_bed: Testbed, password_file: Callable[[str], dict[str, str]]) -> None:
    marker = f"/tmp/skeleton-sudo-{uuid.uuid4().hex}"
    proc = run_cli("--sudo", "--node", "node-0[1-3]", "--", "touch", f"{marker}-$(hostname)",
                   config=sudo_bed.config_path, env=password_file("not-the-password"),
                   stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, out(proc)
    assert "node-[02-03]: local: sudo: wrong password\n" in proc.stdout
    assert proc.stdout.count("wrong password") == 1
    # node-01 (NOPASSWD) ran it; the others did not. The hosts share /tmp with us.
    assert os.path.exists(f"{marker}-node-01")
    assert not any(os.path.exists(f"{marker}-node-0{i}") for i in (2, 3))
    os.unlink(f"{marker}-node-01")


def test_sudo_without_terminal_or_file_exits_2_and_runs_nothing(sudo_bed: Testbed) -> None:
    marker = f"/tmp/skeleton-sudo-{uuid.uuid4().hex}"
    proc = run_cli("--sudo", "--node", "node-0[1-2]", "--", "touch", marker,
                   config=sudo_bed.config_path, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, out(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "node-02 need a sudo password" in lines[0]
    assert PASSWORD_ENV in lines[0] and proc.stdout == ""
    assert not os.path.exists(marker)  # not even on node-01, which needs no password


@pytest.mark.postgres  # make_testbed(db=True) starts one
def test_sudo_password_is_never_journaled_nor_in_ps(
        make_testbed: Callable[..., Testbed],
        password_file: Callable[[str], dict[str, str]]) -> None:
    bed = make_testbed(2, db=True)
    with sudo_rules(bed, SECRET):
        proc = run_cli("--sudo", "--stdin", "--json", "--", "cat >/dev/null; ps -eo args",
                       config=bed.config_path, env=password_file(SECRET), input=b"x\n")
    assert proc.returncode == 0, out(proc)
    results = json.loads(proc.stdout)["nodes"]
    for host in ("node-01", "node-02"):
        ps = results[host]["stdout"]
        assert "sudo -S -k -p  -- sh -c" in ps  # ps did see sudo's own command line
        assert SECRET not in ps and "Tr0ub4dor" not in ps
    assert "Tr0ub4dor" not in proc.stdout + proc.stderr
    assert bed.db is not None
    with psycopg.connect(bed.db.dsn) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)"
            " FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')")]
        dump = "\n".join(str(row) for table in tables
                         for row in conn.execute(f"SELECT t::text FROM {table} t"))
        arguments = [row[0] for row in conn.execute(
            "SELECT arguments::text FROM runs WHERE operation = 'exec'")]
    assert "Tr0ub4dor" not in dump
    assert len(arguments) == 1 and '"sudo": true' in arguments[0]
    assert '"stdin_bytes": 2' in arguments[0]


# ---------------------------------------------------------------- no surprise timeout


def test_exec_has_no_timeout_unless_one_is_set(testbed: Testbed, tmp_path: Path) -> None:
    cfg = testbed.config_path
    slow = run_cli("--node", "node-01", "--", "sleep 2; echo done", config=cfg,
                   stdin=subprocess.DEVNULL)
    assert slow.returncode == 0 and "\ndone\n" in slow.stdout, out(slow)
    bounded = config_variant(testbed, tmp_path / "c.yaml", ssh={"command_timeout": 1})
    killed = run_cli("--node", "node-01", "--", "sleep 30", config=bounded,
                     stdin=subprocess.DEVNULL)
    assert killed.returncode == 4, out(killed)
    assert "command exceeded its 1s timeout" in killed.stdout
    flag = run_cli("--node", "node-01", "--timeout", "1", "--", "sleep 30", config=cfg,
                   stdin=subprocess.DEVNULL)
    assert flag.returncode == 4 and "exceeded its 1s timeout" in flag.stdout, out(flag)


def test_a_frozen_node_still_ends_an_exec_without_timeout(testbed: Testbed,
                                                          tmp_path: Path) -> None:
    cfg = config_variant(testbed, tmp_path / "c.yaml", ssh={"keepalive": 1})
    timer = threading.Timer(1.5, tb.freeze, args=(testbed, "node-02"))
    started = time.monotonic()
    timer.start()
    try:
        proc = run_cli("--node", "node-0[1-2]", "--", "sleep 4; echo done", config=cfg,
                       stdin=subprocess.DEVNULL, timeout=120)
    finally:
        timer.join()
        tb.thaw(testbed, "node-02")
    took = time.monotonic() - started
    assert proc.returncode == 4, out(proc)
    assert "node-02: lost: node stopped answering" in proc.stdout
    assert "---------------- node-01 ----------------\ndone\n" in proc.stdout
    assert took < 60  # generous: the keepalive (1 s) found it, not a timeout (there is none)
