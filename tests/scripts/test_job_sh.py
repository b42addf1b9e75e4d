"""payloads/job.sh under dash, driven through skeleton_app.ops.jobs.node: a job attempt is
started detached, waited for, killed; its exit code, stderr tail and output (binary too) come
back through the reply framing; a `file` output that is missing is a failure even at exit 0.

`LocalRunner` runs each command the way sshd would (`sh -c LINE`, Debian's sh is dash), with
the stdin the operation gives and the stdout fed to its sink in chunks, as the real connector
does. Detached commands are re-parented to this process (a child subreaper for the test), so
the test reaps them, and every process check goes by the pid or process group job.sh gave.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from skeleton_app import payloads
from skeleton_app.engines import Engine
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.ops.jobs import node as job_node
from skeleton_app.results import NodeResult
from skeleton_app.ssh.runner import RunOptions

PR_SET_CHILD_SUBREAPER = 36
DEFAULT = RunOptions()
ECHO = Engine(name="echo", role="r", command="cat {input}", input="file", output="stdout")
WAV = Engine(name="w", role="r", command="cp {input} {output}", input="file", output="file",
             output_suffix=".wav")
SAY = Engine(name="say", role="r", command="printf %s {text} >{output}", input="text",
             output="file")


class LocalRunner:
    """A Runner whose node is this machine: `run` only, as sshd runs an exec request."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def run(self, node: Node, command: str, options: RunOptions = DEFAULT) -> NodeResult[Any]:
        self.commands.append(command)
        started = time.monotonic()
        proc = subprocess.run(["/bin/sh", "-c", command], input=options.stdin or b"",
                              capture_output=True, timeout=options.timeout or 60,
                              start_new_session=True, check=False)
        if options.sink is not None:
            for i in range(0, len(proc.stdout), 1000):
                options.sink(node.id, "stdout", proc.stdout[i:i + 1000])
        return NodeResult(node=node.id, exit_code=proc.returncode,
                          stdout=proc.stdout.decode("utf-8", "replace"),
                          stderr=proc.stderr.decode("utf-8", "replace"),
                          duration=time.monotonic() - started)


def _subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


class Fixture:
    def __init__(self, node: Node, app: Path) -> None:
        self.node = node
        self.app = app
        self.runner = LocalRunner()
        self.groups: list[int] = []

    def start(self, job_id: int, n: int, command: str, *, name: str | None = None,
              data: bytes | None = None) -> int:
        pgid = job_node.start(self.runner, self.node, job_id, n, command, input_name=name,
                              input_data=data, timeout=30)
        self.groups.append(pgid)
        return pgid

    def wait(self, job_id: int, n: int, engine: Engine = ECHO, slice_s: float = 10.0,
             max_bytes: int = 1 << 20, remove: bool = False) -> job_node.AttemptEnd | None:
        return job_node.wait(self.runner, self.node, job_id, n, engine=engine,
                             slice_s=slice_s, max_bytes=max_bytes, remove=remove)

    def dir(self, job_id: int, n: int) -> Path:
        return Path(job_node.job_dir(self.node, job_id, n))


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Fixture]:
    # Awkward characters: every value must reach the shell quoted.
    app = tmp_path / "app dir 'q' $(touch x)"
    app.mkdir()
    _subreaper(True)
    fx = Fixture(Node(id="local-01", host="localhost", app_dir=str(app)), app)
    try:
        yield fx
    finally:
        for pgid in fx.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.05)
        _reap()
        _subreaper(False)


def test_job_sh_is_a_prelude_payload() -> None:
    assert payloads.data("job.sh").startswith(payloads.data("prelude.sh"))
    subprocess.run(["dash", "-n"], input=payloads.data("job.sh"), check=True)


def test_start_then_wait_gives_exit_code_stdout_and_stderr_tail(local: Fixture) -> None:
    data = b"hello 'world' $(x)\n"
    cmd = job_node.render(local.node, 7, 1, ECHO, input_name="in put.txt".replace(" ", "_"))
    before = time.monotonic()
    pgid = local.start(7, 1, cmd + "; echo 'to stderr' >&2; sleep 0.3; exit 3",
                       name="in_put.txt", data=data)
    assert time.monotonic() - before < 2  # detached: start does not wait for the command
    # Its own session and process group, led by the pid job.sh recorded; in the app dir.
    assert os.getsid(pgid) == pgid and os.getpgid(pgid) == pgid
    assert os.readlink(f"/proc/{pgid}/cwd") == str(local.app)
    record = (local.dir(7, 1) / "pgid").read_text().split()
    assert record[0] == str(pgid)
    end = local.wait(7, 1)
    assert end is not None
    assert (end.exit_code, end.output, end.output_truncated) == (3, data, False)
    assert end.stderr_tail == "to stderr\n"
    assert 0.25 <= end.seconds < 5
    assert job_node.failure(end, ECHO) == "exit 3: to stderr"
    assert not (local.app / "x").exists()  # nothing was ever evaluated
    # The input arrived under its name, checked; the attempt stays until removed.
    assert (local.dir(7, 1) / "in" / "in_put.txt").read_bytes() == data
    assert local.wait(7, 1, remove=True) == end
    assert not local.dir(7, 1).exists()


def test_a_damaged_input_is_refused_and_leaves_nothing(local: Fixture) -> None:
    runner = local.runner
    line = shlex.join(["sh", "-c", payloads.text("job.sh"), "job.sh", "start", str(local.app),
                       "5", "1", "a.wav", hashlib.sha256(b"other").hexdigest(), "true"])
    r = runner.run(local.node, line, RunOptions(stdin=b"data"))
    assert r.exit_code == 1
    assert r.stdout.startswith("state=error\nmessage=the input arrived damaged: sha256 ")
    assert not local.dir(5, 1).exists()


def test_start_sent_twice_runs_the_command_once(local: Fixture) -> None:
    pgid = local.start(8, 2, "echo ran >>runs.log; sleep 30")
    assert local.start(8, 2, "echo ran >>runs.log; sleep 30") == pgid
    time.sleep(0.2)
    assert (local.app / "runs.log").read_text() == "ran\n"  # cwd = the app dir


def test_wait_returns_none_while_it_runs_then_the_end(local: Fixture) -> None:
    local.start(9, 1, "sleep 1.5; echo done")
    before = time.monotonic()
    assert local.wait(9, 1, slice_s=0) is None  # a probe: answers at once
    assert time.monotonic() - before < 1.0  # ~30 ms unloaded; not the 0.2 s fast polls
    before = time.monotonic()
    assert local.wait(9, 1, slice_s=0.3) is None
    assert 0.2 < time.monotonic() - before < 2
    end = local.wait(9, 1, slice_s=5)
    assert end is not None and (end.exit_code, end.output) == (0, b"done\n")


def test_run_starts_and_gives_a_quick_end_in_one_call(local: Fixture) -> None:
    data = b"binary \x00\xff in\n"
    cmd = job_node.render(local.node, 13, 1, WAV, input_name="in.wav")
    pgid, end = job_node.start_wait(local.runner, local.node, 13, 1, cmd + "; echo e >&2",
                                    input_name="in.wav", input_data=data, timeout=30,
                                    engine=WAV, slice_s=5.0, max_bytes=1 << 20, remove=True)
    local.groups.append(pgid)
    assert len(local.runner.commands) == 1  # one round trip
    assert end is not None and (end.exit_code, end.output, end.stderr_tail) == (0, data, "e\n")
    assert job_node.failure(end, WAV) is None
    assert not local.dir(13, 1).exists()  # removed with the reply (remove=True)
    # The input's sha256 is checked as by start: a damaged one starts nothing.
    line = shlex.join(["sh", "-c", payloads.text("job.sh"), "job.sh", "run", str(local.app),
                       "13", "2", "a.wav", hashlib.sha256(b"other").hexdigest(), "1", "100",
                       "-", "1", "echo ran >ran.log"])
    r = local.runner.run(local.node, line, RunOptions(stdin=b"data"))
    assert r.exit_code == 1 and "pgid=" not in r.stdout
    assert r.stdout.startswith("state=error\nmessage=the input arrived damaged: sha256 ")
    assert not local.dir(13, 2).exists() and not (local.app / "ran.log").exists()


def test_run_gives_none_for_a_longer_command_then_wait_ends_it(local: Fixture) -> None:
    before = time.monotonic()
    pgid, end = job_node.start_wait(local.runner, local.node, 14, 1, "sleep 1; echo late",
                                    input_name=None, input_data=None, timeout=30,
                                    engine=ECHO, slice_s=0.2, max_bytes=1000, remove=True)
    local.groups.append(pgid)
    assert end is None and time.monotonic() - before < 1.0
    assert os.getpgid(pgid) == pgid and (local.dir(14, 1) / "pgid").exists()
    # Sent again (the same attempt): the first start's group, the command not run twice.
    again, _ = job_node.start_wait(local.runner, local.node, 14, 1, "sleep 1; echo late",
                                   input_name=None, input_data=None, timeout=30,
                                   engine=ECHO, slice_s=0, max_bytes=1000)
    assert again == pgid
    end = local.wait(14, 1, slice_s=5, remove=True)
    assert end is not None and (end.exit_code, end.output) == (0, b"late\n")


def test_run_checks_its_wait_arguments_before_it_starts_anything(local: Fixture) -> None:
    for seconds, max_bytes, output in (("x", "10", "-"), ("1", "-1", "-"), ("1", "9", "a/b")):
        line = shlex.join(["sh", "-c", payloads.text("job.sh"), "job.sh", "run",
                           str(local.app), "15", "1", "", "", seconds, max_bytes, output, "1",
                           "echo ran >ran.log"])
        r = local.runner.run(local.node, line)
        assert r.exit_code == 2 and r.stdout.startswith("state=error\n"), r.stdout
    assert not local.dir(15, 1).exists() and not (local.app / "ran.log").exists()


def test_file_output_binary_safe_published_by_rename(local: Fixture) -> None:
    data = bytes(range(256)) * 300 + b"\n--- end output\n"
    cmd = job_node.render(local.node, 10, 1, WAV, input_name="in.wav")
    assert shlex.split(cmd)[2].endswith("/jobs/10/a1/tmp/output.wav")
    local.start(10, 1, cmd, name="in.wav", data=data)
    end = local.wait(10, 1, engine=WAV)
    assert end is not None and end.exit_code == 0
    assert end.output == data and end.output_size == len(data)
    assert job_node.failure(end, WAV) is None
    assert (local.dir(10, 1) / "out" / "output.wav").read_bytes() == data
    assert not (local.dir(10, 1) / "tmp").exists()


def test_a_missing_output_file_is_a_failure_even_at_exit_0(local: Fixture) -> None:
    # What espeak-ng does on a bad option: says so on stderr, exits 0, writes nothing.
    local.start(11, 1, "echo 'invalid option' >&2; exit 0")
    end = local.wait(11, 1, engine=SAY)
    assert end is not None and end.exit_code == 0 and end.output_missing
    assert job_node.failure(end, SAY) == ("the command exited 0 but wrote no output file"
                                          " (invalid option)")
    # A text reaches the command quoted, as one argument.
    text = "it's $(not) `run`; really"
    local.start(11, 2, job_node.render(local.node, 11, 2, SAY, text=text))
    end = local.wait(11, 2, engine=SAY)
    assert end is not None and end.output == text.encode()


def test_output_over_the_limit_is_cut_and_fails(local: Fixture) -> None:
    local.start(12, 1, "head -c 5000 /dev/zero")
    end = local.wait(12, 1, max_bytes=1000)
    assert end is not None and end.output_truncated
    assert (len(end.output), end.output_size) == (1000, 5000)
    assert job_node.failure(end, ECHO, 1000) == (
        "the output (5000 bytes) is over the limit of 1000 bytes")


def test_kill_stops_the_whole_process_group_and_removes_the_attempt(local: Fixture) -> None:
    # A background child too: killing only the leader would leave it running.
    pgid = local.start(13, 1, "sleep 60 & sleep 60")
    _wait_for(lambda: len(_group(pgid)) >= 3)  # wrapper, sh, two sleeps
    members = _group(pgid)
    before = time.monotonic()
    job_node.kill(local.runner, local.node, 13, 1, pgid=pgid)
    assert time.monotonic() - before < 2  # sleep dies on TERM: no wait for the KILL
    assert _group(pgid) == []
    for pid in members:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    assert not local.dir(13, 1).exists()
    assert not local.dir(13, 1).parent.exists()
    # Idempotent: again, and for an attempt that never existed.
    job_node.kill(local.runner, local.node, 13, 1, pgid=pgid)
    job_node.kill(local.runner, local.node, 99, 3, pgid=None)


def test_kill_uses_kill_after_the_grace(local: Fixture) -> None:
    pgid = local.start(14, 1, "trap '' TERM; sleep 60 & trap '' TERM; sleep 60")
    _wait_for(lambda: len(_group(pgid)) >= 3)
    runner = local.runner
    command, script = payloads.invocation("job.sh", "kill", str(local.app), "14", "1", "",
                                          "0.3")
    r = runner.run(local.node, command, RunOptions(stdin=script))
    assert r.stdout.splitlines()[0] == f"state=killed pgid={pgid} signal=KILL", r.stdout
    assert _group(pgid) == []


def test_kill_never_signals_a_group_that_is_not_the_attempts(local: Fixture) -> None:
    """A stale pgid from the database (the attempt's directory is gone) names some other
    process group now: it carries no SKELETON_JOB_DIR of this attempt, so it is left alone."""
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        job_node.kill(local.runner, local.node, 15, 1, pgid=other.pid)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
    # The same attempt's group without its directory (an orphan whose directory was lost):
    # found by its environment, and killed.
    pgid = local.start(15, 2, "sleep 60")
    _wait_for(lambda: len(_group(pgid)) >= 2)
    (local.dir(15, 2) / "pgid").unlink()
    job_node.kill(local.runner, local.node, 15, 2, pgid=pgid)
    assert _group(pgid) == []


def test_a_command_killed_from_outside_is_lost(local: Fixture) -> None:
    pgid = local.start(16, 1, "sleep 60")
    _wait_for(lambda: len(_group(pgid)) >= 2)
    os.killpg(pgid, signal.SIGKILL)
    _wait_for(lambda: _group(pgid) == [])
    with pytest.raises(NodeError) as err:
        local.wait(16, 1)
    assert err.value.kind is NodeErrorKind.LOST
    assert "gone without an exit status" in err.value.message
    with pytest.raises(NodeError) as err:
        local.wait(17, 1)  # never started
    assert err.value.kind is NodeErrorKind.LOST


def test_check_names_the_missing_tool_and_package(local: Fixture) -> None:
    engine = Engine(name="x", role="r", command="true", input="none",
                    tools=("sh", "no-such-tool-x"), requires=("no-such-dist>=1.0",))
    said = job_node.preflight(local.runner, local.node, engine)
    assert said == (f"no-such-tool-x is not installed on local-01; local-01 has no"
                    f" {local.app}/.venv (run `skeleton cluster bootstrap`)")
    ok = Engine(name="y", role="r", command="true", input="none", tools=("sh", "cat"))
    assert job_node.preflight(local.runner, local.node, ok) is None
