"""Ctrl-C stops the work on the nodes, and a killed controller leaves no writer behind.

Real signals: the CLI runs in a session (process group) of its own, as a shell with job
control starts a foreground job, and gets SIGINT through `os.killpg`, as a terminal sends it
to the whole group (a background `&` job would ignore SIGINT). Afterwards the nodes' own
process tables (`host_exec` in each host's namespaces) must hold nothing the run started.
The time bounds are generous behaviour checks (the commands would run 25+ s otherwise).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from skeleton_app import cancel
from skeleton_app import testbed as tbm
from skeleton_app.cluster import Cluster
from skeleton_app.errors import NodeErrorKind
from skeleton_app.testbed import Testbed
from tests.helpers import REPO, config_variant

QUICK = 10.0  # seconds: an interrupted command must be back well within this


def _start(*args: str, config: Path) -> subprocess.Popen[str]:
    """The CLI as a foreground job of its own process group."""
    argv = [sys.executable, "-m", "skeleton_app", *args, "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _ctrl_c(proc: subprocess.Popen[str]) -> float:
    """SIGINT to the job's whole process group, as a terminal's Ctrl-C; returns when sent."""
    os.killpg(proc.pid, signal.SIGINT)
    return time.monotonic()


def _finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, out, err


def _procs(testbed: Testbed, host: str, pattern: str) -> str:
    """The login user's processes on `host` whose command line matches `pattern`."""
    r = tbm.host_exec(testbed, host, ["pgrep", "-a", "-f", "-u", tbm.USER, pattern],
                      check=False)
    return r.stdout


def _until(what: str, check: Callable[[], bool], proc: subprocess.Popen[str] | None = None,
           timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"ended before {what}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"never saw: {what}"
        time.sleep(0.05)


def _no_leftovers(testbed: Testbed, hosts: Sequence[str], pattern: str) -> None:
    # The node's side winds down on its own clock (sshd reaps the session): allow a moment.
    deadline = time.monotonic() + 5
    for host in hosts:
        while (left := _procs(testbed, host, pattern)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == "", f"{host}: {left}"


# ---------------------------------------------------------------------------- exec


def test_ctrl_c_stops_exec_on_every_node(testbed: Testbed) -> None:
    # node-01 finishes at once (its result stays), node-02 and node-03 sleep 25 s.
    command = ('if [ "$(hostname)" = node-01 ]; then echo quick; else sleep 25 && echo slept;'
               ' fi')
    proc = _start("cluster", "exec", command, "-n", "node-0[1-3]",
                  config=testbed.config_path)
    _until("sleep on node-02 and node-03", lambda: all(
        _procs(testbed, h, "sleep 25") for h in ("node-02", "node-03")), proc)
    sent = _ctrl_c(proc)
    code, out, err = _finish(proc)
    took = time.monotonic() - sent
    assert code == 130, out + err
    assert took < QUICK, took
    assert "node-[02-03]: interrupted: stopped by Ctrl-C" in out, out
    assert "quick" in out and "slept" not in out  # node-01's result is kept
    assert "node-[01" not in out and "node-01: interrupted" not in out
    assert "stopping the work on the nodes" in err
    _no_leftovers(testbed, ["node-02", "node-03"], "sleep 25")


def test_second_ctrl_c_exits_at_once(testbed: Testbed, tmp_path: Path) -> None:
    # A node that drops our packets: the connect waits its full timeout (30 s here), which
    # the first Ctrl-C does not cut short; the second ends the process at once.
    config = config_variant(testbed, tmp_path / "slow.yaml", ssh={"connect_timeout": 30})
    tbm.blackhole(testbed, "node-06")
    try:
        proc = _start("cluster", "exec", "true", "-n", "node-06", config=config)
        time.sleep(1.5)  # inside the connect by now
        _ctrl_c(proc)
        time.sleep(0.5)
        assert proc.poll() is None  # the first one waits for the connect
        sent = _ctrl_c(proc)
        code, _, err = _finish(proc)
        assert time.monotonic() - sent < QUICK
    finally:
        tbm.clear_blackhole(testbed, "node-06")
    assert code == 130, err
    assert "interrupted again: exiting now" in err


def test_library_cancel_and_keyboard_interrupt_stop_the_nodes(testbed: Testbed) -> None:
    with Cluster.from_config(testbed.config_path, env={}) as cluster:
        nodes = cluster.select(["node-04"])
        # From another thread: Cluster.cancel().
        timer = threading.Timer(1.5, cluster.cancel)
        timer.start()
        try:
            t0 = time.monotonic()
            result = cluster.run("sleep 25", nodes)
            assert time.monotonic() - t0 < QUICK
        finally:
            timer.cancel()
            cancel.reset()
        assert result["node-04"].error_kind == NodeErrorKind.INTERRUPTED
        assert result.exit_code() == 130
        _no_leftovers(testbed, ["node-04"], "sleep 25")

        # KeyboardInterrupt in the thread that waits (what Ctrl-C does in a Python program).
        main = threading.main_thread().ident
        assert main == threading.get_ident()
        timer = threading.Timer(1.5, lambda: signal.pthread_kill(main, signal.SIGINT))
        timer.start()
        t0 = time.monotonic()
        try:
            cluster.run("sleep 25", nodes)
            raise AssertionError("no KeyboardInterrupt")
        except KeyboardInterrupt:
            pass
        finally:
            timer.cancel()
        assert time.monotonic() - t0 < QUICK
        assert not cancel.cancelled()  # cleared: the next operation runs
        _no_leftovers(testbed, ["node-04"], "sleep 25")
        assert cluster.run("echo again", nodes)["node-04"].stdout == "again\n"
