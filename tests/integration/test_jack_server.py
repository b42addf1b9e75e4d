"""`skeleton jack status|start|stop|connect|disconnect` on real test hosts with real jackd
(Debian's jackd2, `-d dummy -r 48000 -p 256`: no sound card needed).

Each test has an app dir and a JACK server name of its own and stops every server it started
(`_stopped_after`). The same server name runs on several hosts at once: each host has a
private /dev/shm (skeleton_app/testing/testbed/hosts.py), as a real node has its own.
`jack.jackd` points into the app dir where a test needs a node without jackd (no file there)
or a slow one (a script that sleeps before it execs jackd).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from skeleton_app import cancel
from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings, load_config
from skeleton_app.errors import NodeErrorKind
from skeleton_app.ops.jack.server import PID_FILE, connect_ports, server_control
from skeleton_app.testing import testbed as tbm
from skeleton_app.testing.testbed import Testbed
from tests.support.deploy_support import host_path
from tests.support.frontends import inv, out
from tests.support.helpers import REPO, chown_to_user, config_variant, skeleton

NODES = ["node-01", "node-02", "node-03"]
DUMMY = {"driver": "dummy", "driver_options": ["-r", "48000", "-p", "256"]}


def _config(testbed: Testbed, tmp_path: Path, *, jackd_in_app: str | None = None,
            **jack: Any) -> tuple[Path, Settings]:
    """A config of the test's own: app dir, server name; `jackd_in_app`: jack.jackd is that
    path under the app dir."""
    app_dir = f"/home/skeleton/jack-{uuid.uuid4().hex[:8]}"
    section = {"server_name": f"skt-{uuid.uuid4().hex[:6]}", **DUMMY, **jack}
    if jackd_in_app:
        section["jackd"] = f"{app_dir}/{jackd_in_app}"
    path = config_variant(testbed, tmp_path / "config.yaml", app={"dir": app_dir},
                          jack=section)
    return path, load_config(path, env={})


@contextmanager
def _stopped_after(settings: Settings) -> Iterator[Cluster]:
    cluster = Cluster(settings)
    try:
        yield cluster
    finally:
        try:
            server_control(cluster, cluster.select(NODES), "stop")
        finally:
            cluster.close()


def _jackd_pids(testbed: Testbed, node: str) -> list[int]:
    """The jackd processes inside the host (its own PID namespace)."""
    proc = tbm.host_exec(testbed, node, ["pgrep", "-x", "jackd"], check=False)
    return [int(p) for p in proc.stdout.split()]


def _alive(testbed: Testbed, node: str, pid: int) -> bool:
    return tbm.host_exec(testbed, node, ["test", "-e", f"/proc/{pid}"],
                         check=False).returncode == 0


def _node_file(testbed: Testbed, settings: Settings, node: str, name: str, text: str) -> str:
    """Write app_dir/NAME on `node` only (each host has its own home), executable."""
    remote = f"{settings.app.dir}/{name}"
    local = host_path(testbed, node, remote)
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(text)
    local.chmod(0o755)
    chown_to_user(host_path(testbed, node, settings.app.dir))
    return remote


def test_the_testbeds_own_config_starts_jack(testbed: Testbed) -> None:
    """`skeleton testbed up`'s config.yaml, unchanged, as an operator uses it: its hosts
    have no sound card, so it names the dummy driver and `jack start` works there."""
    config = testbed.config_path
    assert load_config(config, env={}).jack.default.driver == "dummy"
    try:
        started = skeleton("jack", "start", "--node", "node-01", config=config)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "started" in started.stdout or "already running" in started.stdout
    finally:
        stopped = skeleton("jack", "stop", "--node", "node-01", config=config)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def test_start_status_connect_disconnect_stop(testbed: Testbed, tmp_path: Path) -> None:
    config, settings = _config(testbed, tmp_path)
    with _stopped_after(settings) as cluster:
        nodes = cluster.select(NODES)
        started = server_control(cluster, nodes, "start")
        assert started.exit_code() == 0, started.to_json()
        pids = {}
        for node in NODES:
            o = started[node].outcome
            assert o is not None and o.state == "started" and o.pid, started.to_json()
            pids[node] = o.pid
            assert _jackd_pids(testbed, node) == [o.pid]
            pid_file = host_path(testbed, node, f"{settings.app.dir}/{PID_FILE}")
            assert pid_file.read_text().split()[0] == str(o.pid)

        # Idempotent: the same server, no second jackd.
        again = skeleton("jack", "start", "-n", "node-0[1-3]", "--json", config=config)
        assert again.returncode == 0, again.stderr
        for node in NODES:
            data = json.loads(again.stdout)["nodes"][node]["data"]
            assert (data["state"], data["pid"]) == ("already-running", pids[node])
            assert _jackd_pids(testbed, node) == [pids[node]]

        status = skeleton("jack", "status", "-n", "node-0[1-3]", "--json", config=config)
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)["nodes"]["node-02"]["data"]
        assert (data["state"], data["sample_rate"], data["period"]) == ("running", 48000, 256)
        assert isinstance(data["xruns"], int)
        names = {p["name"]: p for p in data["ports"]}
        assert set(names) >= {"system:capture_1", "system:capture_2", "system:playback_1",
                              "system:playback_2"}
        assert names["system:capture_1"]["direction"] == "output"

        text = skeleton("jack", "status", "-n", "node-01", config=config)
        assert text.returncode == 0, text.stderr
        assert "48000" in text.stdout and "system:playback_2" in text.stdout
        # inv: the same command and view (the xrun count may have grown meanwhile).
        task = inv("jack-status", "--node", "node-01", config=config)
        assert task.returncode == 0, out(task)
        assert task.stdout.splitlines()[-4:] == text.stdout.splitlines()[-4:]

        # connect, connect again (already), a typo'd port, disconnect twice.
        a, b = "system:capture_1", "system:playback_1"
        done = skeleton("jack", "connect", "node-01", a, b, config=config)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"node-01: connected: {a} -> {b}"
        seen = server_control(cluster, cluster.select(["node-01"]), "status")
        o = seen["node-01"].outcome
        assert o is not None
        assert [p.connections for p in o.ports if p.name == a] == [(b,)]
        # The other hosts' servers of the same name are their own (private /dev/shm).
        other = server_control(cluster, cluster.select(["node-02"]), "status")["node-02"]
        assert other.outcome is not None
        assert all(not p.connections for p in other.outcome.ports)

        again = skeleton("jack", "connect", "node-01", a, b, config=config)
        assert again.returncode == 0 and "already connected" in again.stdout, again

        typo = skeleton("jack", "connect", "node-01", "system:captur_1", b, config=config)
        assert typo.returncode == 1, typo
        lines = typo.stderr.strip().splitlines()
        assert len(lines) == 1, typo.stderr
        assert "no port system:captur_1 on node-01" in lines[0]
        assert "near matches: system:capture_1" in lines[0]

        undone = connect_ports(cluster, cluster.node("node-01"), a, b, disconnect=True)
        r = undone["node-01"]
        assert r.ok and r.outcome is not None and r.outcome.state == "disconnected", r
        twice = skeleton("jack", "disconnect", "node-01", a, b, config=config)
        assert twice.returncode == 0 and "not connected" in twice.stdout, twice
        ports = ("--node", "node-01", "--port-a", a, "--port-b", b)
        task = inv("jack-connect", *ports, config=config)
        assert task.returncode == 0 and "connected: " in task.stdout, out(task)
        task = inv("jack-disconnect", *ports, config=config)
        assert task.returncode == 0 and "disconnected: " in task.stdout, out(task)

        stopped = skeleton("jack", "stop", "-n", "node-0[1-3]", "--json", config=config)
        assert stopped.returncode == 0, stopped.stderr
        for node in NODES:
            data = json.loads(stopped.stdout)["nodes"][node]["data"]
            assert (data["state"], data["pid"]) == ("stopped", pids[node])
            assert not _alive(testbed, node, pids[node])
            assert _jackd_pids(testbed, node) == []
            assert not host_path(testbed, node, f"{settings.app.dir}/{PID_FILE}").exists()

        # Already stopped: ok; status: down, exit 1.
        again = server_control(cluster, nodes, "stop")
        assert again.exit_code() == 0
        assert {r.outcome.state for r in again.values() if r.outcome} == {"not-running"}
        down = skeleton("jack", "status", "-n", "node-01", config=config)
        assert down.returncode == 1 and "stopped" in down.stdout, down


def test_connect_a_running_clients_port(testbed: Testbed, tmp_path: Path) -> None:
    """A client's own port (jack_metro, started on the node as a user would) connects to the
    dummy driver's playback port."""
    config, settings = _config(testbed, tmp_path)
    with _stopped_after(settings) as cluster:
        node = cluster.select(["node-01"])
        assert server_control(cluster, node, "start").exit_code() == 0
        server = settings.jack.server_name
        metro = cluster.run(f"JACK_DEFAULT_SERVER={server} JACK_NO_START_SERVER=1 setsid -f"
                            " jack_metro -b 120 -n skmetro </dev/null >/dev/null 2>&1", node,
                            timeout=30)
        assert metro.exit_code() == 0, metro.to_json()
        port = "skmetro:120_bpm"
        deadline = 50
        while deadline:
            seen = server_control(cluster, node, "status")["node-01"].outcome
            if seen is not None and any(p.name == port for p in seen.ports):
                break
            deadline -= 1
            threading.Event().wait(0.1)
        done = skeleton("jack", "connect", "node-01", port, "system:playback_2", config=config)
        assert done.returncode == 0, (done.stderr, seen)
        seen = server_control(cluster, node, "status")["node-01"].outcome
        assert seen is not None
        assert [p.connections for p in seen.ports if p.name == port] == [
            ("system:playback_2",)]


def test_jackd_missing_on_one_node_names_the_package(testbed: Testbed,
                                                      tmp_path: Path) -> None:
    jackd_path = "bin/jackd"
    config, settings = _config(testbed, tmp_path, jackd_in_app=jackd_path)
    # node-01 has the program there (the real jackd under that name); node-02 has none.
    _node_file(testbed, settings, "node-01", jackd_path, '#!/bin/sh\nexec /usr/bin/jackd "$@"\n')
    with _stopped_after(settings):
        out = skeleton("jack", "start", "-n", "node-0[1-2]", config=config)
        assert out.returncode == 1, out
        rows = {line.split()[0]: line for line in out.stdout.splitlines()
                if line.startswith("node-0")}
        assert "started" in rows["node-01"], out.stdout
        assert "jackd2" in rows["node-02"] and "not installed" in rows["node-02"], out.stdout
        status = skeleton("jack", "status", "-n", "node-02", "--json", config=config)
        data = json.loads(status.stdout)["nodes"]["node-02"]["data"]
        assert status.returncode == 1 and data["state"] == "missing"
        assert "Debian package jackd2" in data["message"]


def test_ctrl_c_during_start_leaves_nothing_half_started(testbed: Testbed,
                                                         tmp_path: Path) -> None:
    """A jackd that takes 5 s to come up; the start is cancelled after 1 s: the process it
    launched is stopped and its pid file removed."""
    _config_path, settings = _config(testbed, tmp_path, jackd_in_app="bin/jackd")
    _node_file(testbed, settings, "node-01", "bin/jackd",
               '#!/bin/sh\nsleep 5\nexec /usr/bin/jackd "$@"\n')
    cancel.reset()
    try:
        with _stopped_after(settings) as cluster:
            timer = threading.Timer(1.0, cluster.cancel)
            timer.start()
            try:
                result = server_control(cluster, cluster.select(["node-01"]), "start")
            finally:
                timer.cancel()
            r = result["node-01"]
            assert r.error_kind is NodeErrorKind.INTERRUPTED, r
            assert r.error is not None and "stopped again" in r.error, r
            assert result.exit_code() == 130
            assert not host_path(testbed, "node-01", f"{settings.app.dir}/{PID_FILE}").exists()
            leftovers = tbm.host_exec(testbed, "node-01", ["pgrep", "-f", settings.app.dir],
                                      check=False).stdout.split()
            assert leftovers == [], leftovers
            assert _jackd_pids(testbed, "node-01") == []
    finally:
        cancel.reset()


def test_ctrl_c_in_the_cli_during_start(testbed: Testbed, tmp_path: Path) -> None:
    """A real SIGINT to the CLI's process group (a terminal's Ctrl-C) while two nodes start
    a slow jackd: exit 130, each node says so, nothing of the start is left on either."""
    config, settings = _config(testbed, tmp_path, jackd_in_app="bin/jackd")
    for node in ("node-01", "node-02"):
        _node_file(testbed, settings, node, "bin/jackd",
                   '#!/bin/sh\nsleep 30\nexec /usr/bin/jackd "$@"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "skeleton_app", "jack", "start", "-n", "node-0[1-2]",
         "--config", str(config)], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pid_files = [host_path(testbed, n, f"{settings.app.dir}/{PID_FILE}")
                     for n in ("node-01", "node-02")]
        for _ in range(300):  # both starts have launched their (slow) jackd
            if all(p.exists() for p in pid_files):
                break
            threading.Event().wait(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out + err
    assert out.count("stopped again") == 2, out
    for node, pid_file in zip(("node-01", "node-02"), pid_files, strict=True):
        assert not pid_file.exists(), node
        leftovers = tbm.host_exec(testbed, node, ["pgrep", "-f", settings.app.dir],
                                  check=False).stdout.split()
        assert leftovers == [], (node, leftovers)


@pytest.mark.parametrize("args", [
    ("connect", "node-99", "system:capture_1", "system:playback_1"),
    ("connect", "node-01", "system:capture_1", "no-colon"),
    ("status", "-n", "node-99"),
])
def test_bad_input_is_exit_2_before_anything_runs(testbed: Testbed, tmp_path: Path,
                                                  args: tuple[str, ...]) -> None:
    config, _settings = _config(testbed, tmp_path)
    out = skeleton("jack", *args, config=config)
    assert out.returncode == 2, out
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def _spawn(testbed: Testbed, cluster: Cluster, node: str, settings: Settings,
           command: str) -> int:
    """Start `command` detached on `node` as its login user (as a user would by hand);
    return its pid inside the host."""
    pid_path = f"{settings.app.dir}/spawned.pid"
    r = cluster.run(f"mkdir -p {settings.app.dir} && setsid -f sh -c 'echo $$ >{pid_path};"
                    f" exec {command}' </dev/null >/dev/null 2>&1", cluster.select([node]),
                    timeout=30)
    assert r.exit_code() == 0, r.to_json()
    local = host_path(testbed, node, pid_path)
    for _ in range(50):
        if local.exists() and local.read_text().strip():
            return int(local.read_text())
        threading.Event().wait(0.1)
    raise AssertionError(f"{command!r} did not start on {node}")


def test_a_server_skeleton_did_not_start_is_left_alone(testbed: Testbed,
                                                      tmp_path: Path) -> None:
    config, settings = _config(testbed, tmp_path)
    server = settings.jack.server_name
    with Cluster(settings) as cluster:
        pid = _spawn(testbed, cluster, "node-01", settings,
                     f"env JACK_NO_AUDIO_RESERVATION=1 jackd -n {server} -d dummy -r 44100"
                     " -p 128")
        try:
            for _ in range(50):
                seen = server_control(cluster, cluster.select(["node-01"]), "status")
                if seen.exit_code() == 0:
                    break
                threading.Event().wait(0.1)
            o = seen["node-01"].outcome
            assert o is not None and o.state == "foreign", seen.to_json()
            assert (o.sample_rate, o.period, o.xruns) == (44100, 128, None)
            started = skeleton("jack", "start", "-n", "node-01", "--json", config=config)
            data = json.loads(started.stdout)["nodes"]["node-01"]["data"]
            assert started.returncode == 0 and data["state"] == "already-running", started
            assert "not started by skeleton" in data["message"]
            assert _jackd_pids(testbed, "node-01") == [pid]
            stopped = skeleton("jack", "stop", "-n", "node-01", config=config)
            assert stopped.returncode == 1 and "left running" in stopped.stdout, stopped
            assert _alive(testbed, "node-01", pid)
        finally:
            tbm.host_exec(testbed, "node-01", ["kill", str(pid)], check=False)


def test_stop_never_signals_a_process_the_pid_file_does_not_prove_ours(
        testbed: Testbed, tmp_path: Path) -> None:
    """A pid file naming a live process with another start time (a recycled pid), or with
    the right start time but not jackd: stop signals neither."""
    config, settings = _config(testbed, tmp_path)
    with Cluster(settings) as cluster:
        pid = _spawn(testbed, cluster, "node-01", settings, "sleep 120")
        try:
            stat = tbm.host_exec(testbed, "node-01", ["cat", f"/proc/{pid}/stat"]).stdout
            start_time = stat.rsplit(")", 1)[1].split()[19]
            boot = tbm.host_exec(testbed, "node-01",
                                 ["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()
            for record in (f"{pid} 1{start_time} {boot} tok", f"{pid} {start_time} {boot} tok"):
                _node_file(testbed, settings, "node-01", PID_FILE, record + "\n")
                out = skeleton("jack", "stop", "-n", "node-01", "--json", config=config)
                data = json.loads(out.stdout)["nodes"]["node-01"]["data"]
                assert out.returncode == 0 and data["state"] == "not-running", out
                assert _alive(testbed, "node-01", pid), record
        finally:
            tbm.host_exec(testbed, "node-01", ["kill", str(pid)], check=False)
