"""Daemon control for the `process` manager: the real payloads/daemon.sh under dash, real daemons.

Every case runs the script as it is sent over SSH (`sh -s -- ARGS`, the script with its prelude
on stdin, as `payloads.data` gives it, stdout and
stderr on pipes) in a session of its own, so that a stray group signal could never reach pytest.
Daemons detach from the script, so their parent becomes the nearest "child subreaper": the
`node` fixture makes this process one for the duration of a test, then kills and reaps every
process whose command line carries the test's unique marker.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from skeleton_app import payloads

SCRIPTS = Path(__file__).resolve().parents[2] / "skeleton_app" / "payloads"
SCRIPT = SCRIPTS / "daemon.sh"
DASH = shutil.which("dash") or "/bin/sh"
PR_SET_CHILD_SUBREAPER = 36

PID_FILE = "run/daemon.pid"
LOG_FILE = "logs/skeleton-daemon.log"
LOCK_FILE = "run/daemon.lock"


@dataclass
class Reply:
    """What one run of daemon.sh said."""

    rc: int
    text: str
    stderr: str
    elapsed: float
    state: str = ""
    pid: int | None = None
    fields: dict[str, str] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    log_tail: list[str] | None = None


def parse_reply(rc: int, text: str, stderr: str, elapsed: float) -> Reply:
    reply = Reply(rc=rc, text=text, stderr=stderr, elapsed=elapsed)
    lines = text.splitlines()
    assert lines and lines[0].startswith("state="), text
    reply.fields = dict(token.split("=", 1) for token in lines[0].split())
    reply.state = reply.fields["state"]
    if "pid" in reply.fields:
        reply.pid = int(reply.fields["pid"])
    tail: list[str] | None = None
    for line in lines[1:]:
        if line == "--- begin log_tail":
            tail = []
        elif line == "--- end log_tail":
            reply.log_tail = tail
            tail = None
        elif tail is not None:
            tail.append(line)
        else:
            assert line.startswith("message="), text
            reply.messages.append(line.removeprefix("message="))
    return reply


def running(pid: int) -> bool:
    """A process with this pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[1][0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat, counted after the last ')' (the name may hold spaces)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


class Node:
    """One fake node: an app dir (with awkward characters), a unique marker, and helpers."""

    def __init__(self, app_dir: Path, marker: str) -> None:
        self.app_dir = app_dir
        self.marker = marker
        self.pid_file = app_dir / PID_FILE
        self.log = app_dir / LOG_FILE
        self.popens: list[subprocess.Popen[bytes]] = []
        self.dead: list[int] = []  # daemons that died: zombies of ours until reaped

    def reap_later(self, *pids: int | None) -> None:
        self.dead.extend(pid for pid in pids if pid is not None)

    def sleeper(self, code: str = "") -> list[str]:
        """A daemon command: runs `code`, says ready, sleeps; the marker is its last argument."""
        body = f"{code}\nimport time\nprint('ready', flush=True)\ntime.sleep(60)"
        return [sys.executable, "-c", body, self.marker]

    def run(
        self,
        action: str,
        *command: str,
        stop_grace: str = "2",
        start_grace: str = "0.5",
        node_id: str = "node-07",
        args: list[str] | None = None,
    ) -> Reply:
        if args is None:
            args = [
                action,
                str(self.app_dir),
                PID_FILE,
                LOG_FILE,
                LOCK_FILE,
                stop_grace,
                start_grace,
                node_id,
            ]
            if command:
                args += ["--", *command]
        before = time.monotonic()
        # Pipes on all three streams, like an SSH channel: communicate() returns only when
        # every holder of stdout and stderr has closed them, so a daemon that kept one would
        # make this hang (and time out) instead of returning at once.
        proc = subprocess.Popen(
            [DASH, "-s", "--", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        out, err = proc.communicate(payloads.data("daemon.sh"), timeout=30)
        elapsed = time.monotonic() - before
        return parse_reply(proc.returncode, out.decode(), err.decode(), elapsed)

    def unrelated(self) -> int:
        """A live process that is not the daemon (no marker in its command line)."""
        proc = subprocess.Popen(["sleep", "60"])
        self.popens.append(proc)
        return proc.pid

    def write_pid(self, pid: int | str) -> None:
        """Write `pid` as the whole pid file (a bare pid is not a valid record)."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{pid}\n")

    def write_record(self, pid: int, start: int | None = None, boot: str | None = None) -> None:
        """A well-formed record naming `pid`, with its real start time and boot id unless given."""
        self.write_pid(f"{pid} {start_time(pid) if start is None else start} "
                       f"{boot or boot_id()}")

    def ours(self) -> list[int]:
        """Live or zombie processes that carry this test's marker."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self.marker in cmdline(int(entry.name)):
                pids.append(int(entry.name))
        return pids


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    app_dir = tmp_path / "app dir 'quoted' $(x)"
    app_dir.mkdir()
    marker = f"skeleton_app-test-{uuid.uuid4().hex[:12]}"
    _set_subreaper(True)
    the_node = Node(app_dir, marker)
    try:
        yield the_node
    finally:
        # Kill by marker (daemons, workers), then reap those that became our children.
        leftovers = the_node.ours()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in the_node.popens:
            proc.kill()
            proc.wait(timeout=10)
        for pid in leftovers:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for pid in the_node.dead:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        _set_subreaper(False)


# ---- the scripts themselves ---------------------------------------------------------------------



def test_both_scripts_send_the_shared_pid_checks() -> None:
    # status.sh and daemon.sh must never disagree on "is our daemon running": both take the
    # checks from prelude.sh (the loader puts it in front), and neither defines them itself.
    prelude = (SCRIPTS / "prelude.sh").read_text()
    for name in ("daemon.sh", "status.sh"):
        own = (SCRIPTS / name).read_text()
        assert own.startswith(payloads.USES_PRELUDE + "\n"), name
        assert payloads.text(name) == prelude + own
        for function in ("read_stat", "read_record", "is_ours", "lock_held", "find_daemon"):
            assert re.search(rf"^{function}\(\)", prelude, re.MULTILINE), function
            assert not re.search(rf"^{function}\(\)", own, re.MULTILINE), (name, function)


# ---- start ---------------------------------------------------------------------------------------


@pytest.mark.slow  # a real daemon: waits out daemon.sh's 0.5 s start grace
def test_start_detaches_and_returns_quickly(node: Node) -> None:
    reply = node.run("start", *node.sleeper(), start_grace="0.5")
    assert (reply.rc, reply.state) == (0, "started"), reply.text
    assert reply.stderr == ""
    # The grace is 0.5 s; the channel must not stay open for the daemon's life.
    assert reply.elapsed < 2
    pid = reply.pid
    assert pid is not None and running(pid)
    assert node.pid_file.read_text() == f"{pid} {start_time(pid)} {boot_id()}\n"
    assert node.marker in cmdline(pid)
    # Detached: its own session, stdin from /dev/null, output to the log, in the app dir.
    assert os.getsid(pid) == pid
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/fd/1") == str(node.log)
    assert os.readlink(f"/proc/{pid}/fd/2") == str(node.log)
    assert os.readlink(f"/proc/{pid}/cwd") == str(node.app_dir)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"SKELETON_NODE_ID=node-07" in environ
    wait_for(lambda: "ready" in node.log.read_text())


@pytest.mark.slow  # a real daemon: waits out daemon.sh's 0.5 s start grace
def test_start_is_idempotent(node: Node) -> None:
    first = node.run("start", *node.sleeper())
    second = node.run("start", *node.sleeper())
    assert (second.rc, second.state, second.pid) == (0, "already-running", first.pid)
    assert len([pid for pid in node.ours() if running(pid)]) == 1


@pytest.mark.slow  # a real daemon: waits out daemon.sh's 0.5 s start grace
def test_start_passes_arguments_verbatim(node: Node) -> None:
    tricky = ["a b", "$(touch pwned)", "it's", '"q"', "*", "--", ""]
    code = "import sys; print(repr(sys.argv[1:-1]), flush=True)"
    reply = node.run("start", *node.sleeper(code)[:-1], *tricky, node.marker)
    assert reply.state == "started", reply.text
    wait_for(lambda: "ready" in node.log.read_text())
    assert repr(tricky) in node.log.read_text()
    assert not (node.app_dir / "pwned").exists()


@pytest.mark.slow  # a real daemon: waits out daemon.sh's 0.5 s start grace
def test_start_without_node_id_leaves_the_environment_alone(node: Node) -> None:
    reply = node.run("start", *node.sleeper(), node_id="")
    assert reply.state == "started"
    environ = Path(f"/proc/{reply.pid}/environ").read_bytes().split(b"\0")
    assert not any(item.startswith(b"SKELETON_NODE_ID=") for item in environ)


def test_start_of_a_command_that_exits_at_once_reports_died_with_the_log(node: Node) -> None:
    node.log.parent.mkdir(parents=True)
    node.log.write_text("".join(f"old run line {i}\n" for i in range(100)))
    crash = (
        "import sys\n"
        "for i in range(30): print(f'line {i}')\n"
        "print('Traceback: boom', file=sys.stderr)\n"
        "sys.exit(3)"
    )
    reply = node.run("start", sys.executable, "-c", crash, node.marker, start_grace="2")
    node.reap_later(reply.pid)
    assert (reply.rc, reply.state) == (1, "died"), reply.text
    assert reply.elapsed < 2  # noticed at once, not after the whole grace
    assert reply.log_tail is not None and len(reply.log_tail) == 20
    assert reply.log_tail[-1] == "Traceback: boom"
    assert reply.log_tail[-2] == "line 29"
    assert not any("old run" in line for line in reply.log_tail)
    assert not node.pid_file.exists()
    assert node.run("status").state == "not-running"


def test_start_of_a_missing_program_reports_died(node: Node) -> None:
    reply = node.run("start", "no-such-program-here", node.marker)
    node.reap_later(reply.pid)
    assert (reply.rc, reply.state) == (1, "died")
    assert reply.log_tail is not None
    assert any("no-such-program-here" in line and "not found" in line for line in reply.log_tail)


@pytest.mark.slow  # a real daemon: waits out daemon.sh's 0.5 s start grace
def test_any_command_line_works_even_one_that_execs_into_another(node: Node) -> None:
    # Nothing looks at the command line: a shell script that execs into a program whose argv
    # shares nothing with the configured command is started, found and stopped.
    script = node.app_dir / "run-daemon.sh"
    script.write_text(f"#!/bin/sh\necho ready\n"
                      f"exec {sys.executable} -c 'import time; time.sleep(60)' {node.marker}\n")
    script.chmod(0o755)
    reply = node.run("start", "./run-daemon.sh")
    assert (reply.rc, reply.state) == (0, "started"), reply.text
    assert reply.pid is not None
    wait_for(lambda: cmdline(reply.pid or 0).startswith(sys.executable))  # exec'd by the script
    record = node.pid_file.read_text().split()
    assert record == [str(reply.pid), str(start_time(reply.pid)), boot_id()]
    status = node.run("status")
    assert (status.rc, status.state, status.pid) == (0, "running", reply.pid)
    stop = node.run("stop")
    node.reap_later(reply.pid)
    assert (stop.rc, stop.state, stop.pid) == (0, "stopped", reply.pid)
    assert not running(reply.pid)


@pytest.mark.slow  # a real daemon: waits out daemon.sh's 0.5 s start grace
def test_a_command_name_with_spaces_and_parentheses_is_parsed_right(node: Node) -> None:
    # /proc/PID/stat field 2 is the command name in parentheses, and it may hold ") (" and
    # spaces itself: the start time (field 22) is counted after the LAST ')'.
    name = "sl) (ee p) x"
    (node.app_dir / name).symlink_to(os.path.realpath(sys.executable))
    reply = node.run("start", f"./{name}", "-c", "import time; time.sleep(60)", node.marker)
    assert (reply.rc, reply.state) == (0, "started"), reply.text
    assert reply.pid is not None
    assert Path(f"/proc/{reply.pid}/stat").read_text().count(")") >= 3
    assert node.pid_file.read_text().split() == [str(reply.pid), str(start_time(reply.pid)),
                                                 boot_id()]
    assert node.run("status").pid == reply.pid
    node.pid_file.write_text("garbage\n")  # found through the lock: the holder's stat, too
    assert node.run("status").pid == reply.pid
    stop = node.run("stop")
    node.reap_later(reply.pid)
    assert (stop.state, stop.pid) == ("stopped", reply.pid)
    assert not running(reply.pid)


@pytest.mark.slow  # a real daemon: waits out daemon.sh's 0.5 s start grace
def test_start_cleans_a_stale_pid_file_and_spares_an_unrelated_process(node: Node) -> None:
    other = node.unrelated()
    node.write_pid(other)
    reply = node.run("start", *node.sleeper())
    assert reply.state == "started"
    assert reply.pid != other
    assert running(other)


def test_start_in_a_missing_app_dir_is_an_error(node: Node) -> None:
    node.app_dir.rmdir()
    reply = node.run("start", *node.sleeper())
    assert (reply.rc, reply.state) == (1, "error")
    assert node.ours() == []


# ---- stop ----------------------------------------------------------------------------------------


@pytest.mark.slow  # a real daemon: waits out daemon.sh's 0.5 s start grace
def test_stop_sends_term_and_is_idempotent(node: Node) -> None:
    pid = node.run("start", *node.sleeper()).pid
    assert pid is not None
    reply = node.run("stop")
    node.reap_later(pid)
    assert (reply.rc, reply.state, reply.pid, reply.fields.get("signal")) == (
        0,
        "stopped",
        pid,
        "TERM",
    )
    assert not running(pid)
    assert not node.pid_file.exists()
    again = node.run("stop")
    assert (again.rc, again.state, again.messages) == (0, "not-running", [])


@pytest.mark.slow  # a real daemon: waits out daemon.sh's 0.5 s start grace
def test_stop_escalates_to_kill_when_term_is_ignored(node: Node) -> None:
    stubborn = node.sleeper("import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    pid = node.run("start", *stubborn).pid
    assert pid is not None
    wait_for(lambda: "ready" in node.log.read_text())  # the handler is in place
    reply = node.run("stop", stop_grace="0.5")
    node.reap_later(pid)
    assert (reply.rc, reply.state, reply.fields.get("signal")) == (0, "stopped", "KILL")
    assert 0.5 <= reply.elapsed < 3
    assert not running(pid)


@pytest.mark.slow  # a real daemon: waits out daemon.sh's 0.5 s start grace
def test_stop_takes_the_daemons_workers_down_too(node: Node) -> None:
    spawn = (
        "import subprocess, sys\n"
        "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', sys.argv[1]])\n"
        "print('worker', w.pid, flush=True)"
    )
    pid = node.run("start", *node.sleeper(spawn)).pid
    wait_for(lambda: "ready" in node.log.read_text())
    worker = int(re.search(r"worker (\d+)", node.log.read_text()).group(1))  # type: ignore[union-attr]
    assert running(worker)
    reply = node.run("stop")
    node.reap_later(pid, worker)
    assert reply.state == "stopped"
    wait_for(lambda: not running(worker))


def test_stop_with_a_stale_pid_file(node: Node) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    node.write_pid(f"{gone.pid} 12345 {boot_id()}")
    status = node.run("status")
    assert (status.rc, status.state) == (3, "not-running")
    assert status.messages == [f"stale pid file {PID_FILE}: pid {gone.pid} is gone"]
    assert node.pid_file.exists()  # status only looks
    reply = node.run("stop")
    assert (reply.rc, reply.state) == (0, "not-running")
    assert reply.messages == [
        f"stale pid file {PID_FILE}: pid {gone.pid} is gone; pid file removed"
    ]
    assert not node.pid_file.exists()


@pytest.mark.parametrize("record", ["bare pid", "other start time", "other boot"])
def test_stop_never_kills_an_unrelated_live_process(node: Node, record: str) -> None:
    # A recycled pid: the pid file names a live process that is not the daemon.
    other = node.unrelated()
    if record == "bare pid":
        node.write_pid(other)
        why = f"pid file {PID_FILE} does not hold a valid record (PID START_TIME BOOT_ID)"
    else:
        if record == "other start time":
            node.write_record(other, start=start_time(other) + 1)
        else:
            node.write_record(other, boot="6e1f0c1e-0000-4000-8000-000000000000")
        why = (f"pid {other} from {PID_FILE} is another process (another start time or boot):"
               " left alone")
    status = node.run("status")
    assert (status.rc, status.state, status.messages) == (3, "not-running", [why])
    reply = node.run("stop", stop_grace="0.2")
    assert (reply.rc, reply.state) == (0, "not-running")
    assert reply.messages == [f"{why}; pid file removed"]
    time.sleep(0.3)
    assert running(other)
    assert not node.pid_file.exists()


def _corrupt(node: Node, how: str) -> int | None:
    """Spoil the pid file of a running daemon; return the live decoy it names, if any."""
    if how == "deleted":
        node.pid_file.unlink()
        return None
    if how == "recycled":
        decoy = node.unrelated()
        node.write_record(decoy, start=start_time(decoy) + 7)
        return decoy
    node.write_pid(how)
    return None


CORRUPTIONS = ["-1", "0", "1", "garbage", "", "deleted", "recycled"]


@pytest.mark.slow  # real daemons started and stopped twice per case: ~2 s each, 7 cases
@pytest.mark.parametrize("how", CORRUPTIONS)
def test_a_corrupt_pid_file_never_loses_the_running_daemon(node: Node, how: str) -> None:
    # The daemon holds its lock: status still says running, stop stops exactly it (and never
    # the decoy, nor -1, 0 or 1), and the next start starts a new one.
    pid = node.run("start", *node.sleeper()).pid
    assert pid is not None
    decoy = _corrupt(node, how)
    status = node.run("status")
    assert (status.rc, status.state, status.pid) == (0, "running", pid), status.text
    assert "found it through the lock" in status.messages[0]
    stop = node.run("stop")
    node.reap_later(pid)
    assert (stop.rc, stop.state, stop.pid) == (0, "stopped", pid), stop.text
    assert not running(pid)
    if decoy is not None:
        assert running(decoy)
    assert not node.pid_file.exists()
    again = node.run("start", *node.sleeper())
    node.reap_later(again.pid)
    assert (again.rc, again.state) == (0, "started"), again.text
    assert node.ours() == [again.pid]


@pytest.mark.slow  # a real daemon: waits out daemon.sh's 0.5 s start grace
@pytest.mark.parametrize("how", ["garbage", "recycled"])
def test_start_over_a_corrupt_pid_file_finds_the_daemon_and_repairs_the_record(
    node: Node, how: str
) -> None:
    pid = node.run("start", *node.sleeper()).pid
    assert pid is not None
    decoy = _corrupt(node, how)
    again = node.run("start", *node.sleeper())
    assert (again.rc, again.state, again.pid) == (0, "already-running", pid), again.text
    assert node.ours() == [pid]  # no second daemon
    assert node.pid_file.read_text().split() == [str(pid), str(start_time(pid)), boot_id()]
    assert node.run("status").messages == []  # read from the record again
    if decoy is not None:
        assert running(decoy)


def test_a_daemon_whose_lock_holder_cannot_be_named_is_never_reported_stopped(
    node: Node,
) -> None:
    # Some other process holds the lock file (and is not a session leader we can name): the
    # script must not call the daemon "not running" nor start a second one.
    node.pid_file.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(["flock", str(node.app_dir / LOCK_FILE), sys.executable, "-c",
                               "import time; time.sleep(60)", node.marker])
    node.popens.append(holder)
    wait_for(lambda: node.run("status").state == "running")
    stop = node.run("stop")
    assert (stop.rc, stop.state) == (1, "error")
    assert "neither" in stop.messages[0] and "left running" in stop.messages[0]
    start = node.run("start", *node.sleeper())
    assert (start.rc, start.state) == (0, "already-running")
    assert not node.log.exists()  # nothing was launched
    assert holder.poll() is None


@pytest.mark.parametrize("content", ["0", "1", "-1", "", "abc", "12x"])
def test_stop_with_a_bogus_pid_file_signals_nobody(node: Node, content: str) -> None:
    # "0" matters most: `kill 0` would signal the script's whole process group.
    node.write_pid(content)
    reply = node.run("stop")
    assert (reply.rc, reply.state) == (0, "not-running")
    assert not node.pid_file.exists()


def test_stop_and_status_without_an_app_dir(node: Node) -> None:
    node.app_dir.rmdir()
    assert node.run("stop").rc == 0
    assert node.run("status").rc == 3


# ---- status and usage ----------------------------------------------------------------------------


@pytest.mark.slow  # a real daemon: waits out daemon.sh's 0.5 s start grace
def test_status_running(node: Node) -> None:
    pid = node.run("start", *node.sleeper()).pid
    reply = node.run("status")
    assert (reply.rc, reply.state, reply.pid) == (0, "running", pid)


@pytest.mark.slow  # a real daemon: waits out daemon.sh's 0.5 s start grace
def test_status_never_signals(node: Node) -> None:
    pid = node.run("start", *node.sleeper()).pid
    assert pid is not None
    for _ in range(3):
        node.run("status")
    assert running(pid)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["start"], "expected ACTION"),
        (["restart", ".", PID_FILE, LOG_FILE, "m", "1", "1", ""], "ACTION must be"),
        (["stop", ".", PID_FILE, LOG_FILE, "", "1", "1", ""], "LOCK_FILE"),
        (["stop", ".", "", LOG_FILE, "m", "1", "1", ""], "PID_FILE"),
        (["stop", ".", PID_FILE, LOG_FILE, "m", "soon", "1", ""], "STOP_GRACE"),
        (["stop", ".", PID_FILE, LOG_FILE, "m", "1", "1.2.3", ""], "START_GRACE"),
        (["start", ".", PID_FILE, LOG_FILE, "m", "1", "1", "", "true"], "expected --"),
        (["start", ".", PID_FILE, LOG_FILE, "m", "1", "1", ""], "needs the daemon command"),
    ],
)
def test_bad_arguments_do_nothing(node: Node, args: list[str], needle: str) -> None:
    reply = node.run("", args=[arg if arg != "." else str(node.app_dir) for arg in args])
    assert (reply.rc, reply.state) == (2, "error"), reply.text
    assert needle in reply.messages[0]
    assert not node.pid_file.exists()
    assert not node.log.exists()


@pytest.mark.parametrize("grace", ["0", "0.25", "3", "08", "10.", "007.5"])
def test_grace_formats(node: Node, grace: str) -> None:
    # Leading zeros must not be read as octal ("08" is an arithmetic error in sh).
    reply = node.run("status", stop_grace=grace, start_grace=grace)
    assert (reply.rc, reply.state) == (3, "not-running"), reply.text
