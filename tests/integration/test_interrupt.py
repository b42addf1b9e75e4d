"""Ctrl-C stops the work on the nodes, and a killed controller leaves no writer behind.

Real signals: the CLI runs in a session (process group) of its own, as a shell with job
control starts a foreground job, and gets SIGINT through `os.killpg`, as a terminal sends it
to the whole group (a background `&` job would ignore SIGINT). Afterwards the nodes' own
process tables (`host_exec` in each host's namespaces) must hold nothing the run started.
The time bounds are generous behaviour checks (the commands would run 25+ s otherwise).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from skeleton_app import cancel
from skeleton_app.cluster import Cluster
from skeleton_app.errors import NodeErrorKind
from skeleton_app.testing import testbed as tbm
from skeleton_app.testing.testbed import Testbed
from skeleton_app.transfers import DEFAULT_PARTIAL_DIR
from skeleton_app.transfers.tree import tree_digest
from tests.support.deploy_support import (
    daemons_stopped_after,
    host_path,
    make_source,
    settings_of,
    unique_app_dir,
    variant,
)
from tests.support.helpers import REPO, chown_to_user, config_variant
from tests.support.models import (
    MIB,
    expected_tree,
    leftovers,
    make_model,
    models_root,
    tree,
)

DIGEST_EXCLUDES = (".venv/", "__pycache__/", "*.pyc", ".git/", "logs/", "/.skeleton-deploy/",
                   "/.skeleton-daemon.pid", f"{DEFAULT_PARTIAL_DIR}/")

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


# ---------------------------------------------------------------------------- the token


def test_token_wakes_waiters_selectors_and_callbacks_then_resets() -> None:
    import select

    token = cancel.CancelToken()
    fd = token.fileno()
    fired: list[str] = []
    with token.on_cancel(lambda: fired.append("stop")):
        assert select.select([fd], [], [], 0)[0] == []
        threading.Timer(0.1, token.cancel).start()
        assert token.wait(10) and token.cancelled
        _until("the callback", lambda: fired == ["stop"], timeout=5)
        assert select.select([fd], [], [], 5)[0] == [fd]
        token.cancel()  # twice: callbacks run once
        time.sleep(0.1)
        assert fired == ["stop"]
    token.reset()
    assert not token.cancelled and select.select([fd], [], [], 0)[0] == []
    with token.on_cancel(lambda: fired.append("late")):
        pass
    assert fired == ["stop"]  # a callback whose block ended never runs


def test_executor_turns_keyboard_interrupt_into_a_cancel_of_its_workers() -> None:
    stopped = threading.Event()

    def worker() -> None:
        # Like a node's command: runs until the token says stop.
        if cancel.TOKEN.wait(30):
            stopped.set()

    main = threading.get_ident()
    threading.Timer(0.2, lambda: signal.pthread_kill(main, signal.SIGINT)).start()
    t0 = time.monotonic()
    try:
        with cancel.executor(2, "t") as pool:
            pool.submit(worker)
            time.sleep(30)
        raise AssertionError("no KeyboardInterrupt")
    except KeyboardInterrupt:
        pass
    assert stopped.is_set() and time.monotonic() - t0 < QUICK
    assert not cancel.cancelled()  # cleared once the workers were gone


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


def test_ctrl_c_breaks_off_a_connect_in_progress(testbed: Testbed, tmp_path: Path) -> None:
    """A node whose SYN-ACKs vanish (blackholed towards the controller) would hold the
    command for the whole connect_timeout: Ctrl-C ends that wait too."""
    config = config_variant(testbed, tmp_path / "slow-connect.yaml",
                            ssh={"connect_timeout": 40})
    tbm.blackhole(testbed, "node-05")
    try:
        proc = _start("cluster", "exec", "sleep 25", "-n", "node-0[4-5]", config=config)
        _until("sleep on node-04", lambda: bool(_procs(testbed, "node-04", "sleep 25")), proc)
        sent = _ctrl_c(proc)
        code, out, err = _finish(proc)
        took = time.monotonic() - sent
    finally:
        tbm.clear_blackhole(testbed, "node-05")
    assert code == 130, out + err
    assert took < QUICK, took  # not the 40 s connect timeout
    lines = [ln for ln in out.splitlines() if "interrupted: stopped by Ctrl-C" in ln]
    assert any(ln.startswith(("node-05:", "node-[04-05]:")) for ln in lines), out
    assert any(ln.startswith(("node-04:", "node-[04-05]:")) for ln in lines), out
    _no_leftovers(testbed, ["node-04"], "sleep 25")


def test_second_ctrl_c_exits_at_once(testbed: Testbed) -> None:
    # A command that ignores SIGINT and SIGTERM: the first Ctrl-C has to escalate to SIGKILL
    # (at +0.6 s) before the node lets go; a second Ctrl-C inside that window ends the
    # process at once, by its own handler's path.
    for _attempt in range(3):
        proc = _start("cluster", "exec", "trap '' INT TERM; sleep 25", "-n", "node-06",
                      config=testbed.config_path)
        _until("sleep on node-06", lambda: bool(_procs(testbed, "node-06", "sleep 25")), proc)
        first = _ctrl_c(proc)
        time.sleep(0.2)
        if proc.poll() is None:
            break  # the first one is still stopping the node
        # Only a loaded machine's late wake-up may find it done: after the SIGKILL step.
        late = time.monotonic() - first
        assert late >= 0.6, f"the first Ctrl-C ended it {late:.2f}s after: {_finish(proc)}"
        _finish(proc)
    else:
        pytest.fail("three times the test woke up too late to send a second Ctrl-C")
    sent = _ctrl_c(proc)
    code, _, err = _finish(proc)
    assert time.monotonic() - sent < QUICK
    assert code == 130, err
    assert "interrupted again: exiting now" in err
    # The first Ctrl-C's SIGKILL went out before the exit, or sshd ends the session when our
    # connection drops: either way nothing is left running.
    _no_leftovers(testbed, ["node-06"], "sleep 25")


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


# ---------------------------------------------------------------------------- deploy


def _noise_tree(root: Path, count: int, size: int) -> dict[str, bytes]:
    files = {f"data/f{i}.bin": os.urandom(size) for i in range(count)}
    make_source(root, "A")
    for name, blob in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blob)
    return files


def _rewrite(root: Path, names: Sequence[str], size: int) -> dict[str, bytes]:
    new = {name: os.urandom(size) for name in names}
    for name, blob in new.items():
        (root / name).write_bytes(blob)
    return new


def _digest(testbed: Testbed, node: str, app_dir: str) -> str | None:
    path = host_path(testbed, node, f"{app_dir}/.skeleton-deploy/digest")
    return path.read_text().splitlines()[0] if path.exists() else None


def _row(out: str, node: str) -> str:
    return next((line for line in out.splitlines()
                 if re.search(rf"(^|\s){re.escape(node)}\s", line)), "")


def test_ctrl_c_stops_deploy_and_says_what_was_committed(testbed: Testbed,
                                                         tmp_path: Path) -> None:
    src = tmp_path / "src"
    old = _noise_tree(src, 6, 300_000)
    app_dir = unique_app_dir("ctrl-c")
    config = variant(testbed, tmp_path, app_dir=app_dir)
    first = _start("cluster", "deploy", "--source", str(src), "-n", "node-0[4-5]", config=config)
    assert _finish(first)[0] == 0
    new = _rewrite(src, list(old), 300_000)
    version = tree_digest(src, DIGEST_EXCLUDES).version
    slow = host_path(testbed, "node-05", app_dir)
    tbm.set_rate(testbed, "node-05", "1mbit")  # 1.8 MB to send: ~15 s there, instant on 04
    try:
        proc = _start("cluster", "deploy", "--source", str(src), "-n", "node-0[4-5]",
                      config=config)
        _until("node-04 committed and node-05 mid-transfer", lambda: (
            _digest(testbed, "node-04", app_dir) == version
            and any((slow / "data" / DEFAULT_PARTIAL_DIR).glob("*"))), proc)
        sent = _ctrl_c(proc)
        code, out, err = _finish(proc)
        took = time.monotonic() - sent
    finally:
        tbm.set_rate(testbed, "node-05", None)
    assert code == 130, out + err
    assert took < QUICK, took
    assert "✓ deployed" in _row(out, "node-04"), out  # committed before Ctrl-C: says so
    assert "✗ interrupted" in _row(out, "node-05"), out
    flat = re.sub(r"[\s│]+", " ", out)  # the table wraps long cells
    assert ("interrupted: rsync stopped by Ctrl-C; nothing committed: the node keeps its"
            " previous files") in flat, out
    assert "aborted" not in out + err
    # node-05: every file old, no digest (a rerun is never mistaken for up to date).
    assert [(slow / name).read_bytes() for name in old] == list(old.values())
    assert _digest(testbed, "node-05", app_dir) is None
    fast = host_path(testbed, "node-04", app_dir)
    assert [(fast / name).read_bytes() for name in new] == list(new.values())
    _no_leftovers(testbed, ["node-05"], "rsync")

    again = _start("cluster", "deploy", "--source", str(src), "-n", "node-0[4-5]",
                   "--lock-wait", "2", config=config)
    code, out, err = _finish(again)
    assert code == 0, out + err
    assert [(slow / name).read_bytes() for name in new] == list(new.values())
    assert _digest(testbed, "node-05", app_dir) == version


def test_killed_controller_leaves_no_writer_and_a_rerun_succeeds(testbed: Testbed,
                                                                 tmp_path: Path) -> None:
    """kill -9 of the controller alone (not its process group): its rsync and ssh die with
    it, and the node's receiving rsync holds the writer lock as long as it lives, so an
    immediate rerun waits for it instead of racing it."""
    src = tmp_path / "src"
    old = _noise_tree(src, 8, 300_000)
    app_dir = unique_app_dir("kill9")
    config = variant(testbed, tmp_path, app_dir=app_dir)
    first = _start("cluster", "deploy", "--source", str(src), "-n", "node-06", config=config)
    assert _finish(first)[0] == 0
    new = _rewrite(src, list(old), 300_000)
    root = host_path(testbed, "node-06", app_dir)
    tbm.set_rate(testbed, "node-06", "1mbit")
    try:
        proc = _start("cluster", "deploy", "--source", str(src), "-n", "node-06",
                      config=config)
        _until("the transfer under way",
               lambda: any((root / "data" / DEFAULT_PARTIAL_DIR).glob("*")), proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        # Its rsync and ssh are gone with it (they would write on for ~15 s otherwise).
        _until("no rsync of that deploy on the controller", lambda: subprocess.run(
            ["pgrep", "-f", f"{app_dir}"], capture_output=True).stdout == b"", timeout=10)
        rerun = _start("cluster", "deploy", "--source", str(src), "-n", "node-06",
                       "--lock-wait", "20", config=config)
        code, out, err = _finish(rerun)
    finally:
        tbm.set_rate(testbed, "node-06", None)
    assert code == 0, out + err
    assert [(root / name).read_bytes() for name in new] == list(new.values())
    assert _digest(testbed, "node-06", app_dir) == tree_digest(src, DIGEST_EXCLUDES).version
    assert not list(root.rglob(DEFAULT_PARTIAL_DIR))
    _no_leftovers(testbed, ["node-06"], "rsync")


# ---------------------------------------------------------------------------- daemon, logs


def test_ctrl_c_stops_a_rolling_restart_between_batches(testbed: Testbed,
                                                        tmp_path: Path) -> None:
    config = variant(testbed, tmp_path, port=8791, daemon={"start_grace": 2})
    src = make_source(tmp_path / "src", "A")  # the stand-in daemon, deployed first
    deployed = _start("cluster", "deploy", "--source", str(src), "-n", "node-0[1-4]",
                      config=config)
    assert _finish(deployed)[0] == 0
    with daemons_stopped_after(settings_of(config)):
        proc = _start("cluster", "daemon", "restart", "--batch", "1", "-n", "node-0[1-4]",
                      config=config)
        # Each restart takes its start grace (2 s): Ctrl-C once node-01's daemon runs.
        _until("node-01 restarted", lambda: bool(_procs(testbed, "node-01", "standin.py 8791")),
               proc)
        sent = _ctrl_c(proc)
        code, out, err = _finish(proc)
        took = time.monotonic() - sent
        assert code == 130, out + err
        assert took < QUICK, took
        flat = re.sub(r"[\s│]+", " ", out)
        assert "interrupted: the rollout stopped; not restarted:" in flat, out
        assert "node-04 - not reached (rollout stopped)" in flat, out
        assert re.search(r"node-01 ✓ \d+", flat), out
        # The batch in flight finished its restart (never a daemon left stopped half-way);
        # no batch started after the Ctrl-C.
        assert _procs(testbed, "node-04", "standin.py 8791") == ""
        assert _procs(testbed, "node-01", "standin.py 8791")
        _no_leftovers(testbed, ["node-01", "node-02", "node-03", "node-04"], "daemon.sh")


def test_ctrl_c_stops_logs_follow_and_its_remote_tails(testbed: Testbed,
                                                       tmp_path: Path) -> None:
    logdir = f"logs-{os.urandom(4).hex()}"
    config = config_variant(testbed, tmp_path / "logs.yaml", app={"logs_dir": logdir},
                            logs={"files": [f"{logdir}/*.log"]})
    for host in ("node-02", "node-03"):
        path = testbed.host(host).app_dir / logdir / "skeleton-daemon.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("first\n")
        chown_to_user(path.parent)
    proc = _start("cluster", "logs", "--follow", "-n", "node-0[2-3]", config=config)
    _until("tails on both nodes", lambda: all(
        _procs(testbed, h, "tail") for h in ("node-02", "node-03")), proc)
    sent = _ctrl_c(proc)
    code, out, err = _finish(proc)
    assert time.monotonic() - sent < QUICK
    assert code == 0, out + err  # Ctrl-C is how --follow ends
    assert "node-02: first" in out and "node-03: first" in out
    _no_leftovers(testbed, ["node-02", "node-03"], "tail|skeleton-logs")


# ---------------------------------------------------------------------------- sync-models


@pytest.mark.parametrize("how", [(), ("--relay",)], ids=["chain", "relay"])
def test_ctrl_c_mid_sync_publishes_nothing_and_leaves_nothing(
        make_testbed: Callable[..., Testbed], how: tuple[str, ...]) -> None:
    bed = make_testbed(3, rate="20mbit")  # 24 MiB: ~10 s a link
    make_model(bed, "node-01", "models", "big", size=24 * MIB)
    staged = models_root(bed, "node-02", "models") / ".skeleton-staging" / "big" / "weights.bin"
    proc = _start("cluster", "sync-models", "--source-node", "node-01", "-n", "node-0[1-3]",
                  "--json", *how, config=bed.config_path)
    _until("node-02 receiving", lambda: staged.exists() and staged.stat().st_size > 2 * MIB,
           proc, timeout=60)
    sent = _ctrl_c(proc)
    code, out, err = _finish(proc)
    took = time.monotonic() - sent
    assert code == 130, out + err
    assert took < QUICK, took
    data = json.loads(out)
    for host in ("node-02", "node-03"):
        node = data["nodes"][host]
        assert node["error_kind"] == "interrupted", node
        assert "nothing published on this node" in node["error"]
        assert node["data"]["status"] == "failed"  # never "synced"/"done" when it was not
        assert not (models_root(bed, host, "models") / "big").exists()
    # No chain process, relay, control master or run dir left on any node.
    for host in bed.ids:
        assert leftovers(bed, host) == [], host
        assert _procs(bed, host, "tar |ssh ") == "", host


@pytest.mark.parametrize("how", [(), ("--relay",)], ids=["chain", "relay"])
def test_killed_controller_mid_sync_leaves_nothing_on_any_node_and_a_rerun_succeeds(
        make_testbed: Callable[..., Testbed], how: tuple[str, ...]) -> None:
    """SIGKILL of the controller's whole process group while the chain streams: no Ctrl-C
    clean-up runs, yet every node (source and targets) stops the run's streams, closes its
    control masters and removes its run dir within seconds (the run's lease, models.sh)."""
    bed = make_testbed(4, rate="20mbit")  # 24 MiB: ~10 s a link; masters persist 120 s
    model = make_model(bed, "node-01", "models", "big", size=24 * MIB)
    last = models_root(bed, "node-04", "models") / ".skeleton-staging" / "big" / "weights.bin"
    proc = _start("cluster", "sync-models", "--source-node", "node-01", "-n", "node-0[1-4]",
                  *how, config=bed.config_path)
    # The end of the chain receiving: every hop streams, every master is open.
    _until("node-04 receiving", lambda: last.exists() and last.stat().st_size > 2 * MIB,
           proc, timeout=60)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()

    def clean() -> bool:
        return all(leftovers(bed, h, settle=0) == []
                   and _procs(bed, h, "tar |tee |ssh |rsync ") == "" for h in bed.ids)

    _until("nothing of the run on any node", clean, timeout=20)
    assert last.stat().st_size < 24 * MIB  # it was stopped, not left to finish
    # The rerun is about succeeding after the kill, not about a slow link: unshaped, it takes
    # a second or two instead of another 10-30 s at 20 Mbit/s.
    for host in bed.ids:
        tbm.set_rate(bed, host, None)
    rerun = _start("cluster", "sync-models", "--source-node", "node-01", "-n", "node-0[1-4]",
                   "--json", *how, config=bed.config_path)
    code, out, err = _finish(rerun, timeout=120)
    assert code == 0, out + err
    for host in ("node-02", "node-03", "node-04"):
        assert json.loads(out)["nodes"][host]["data"]["status"] == "synced", out
        assert tree(models_root(bed, host, "models") / "big") == expected_tree(model), host
    for host in bed.ids:
        assert leftovers(bed, host) == [], host
