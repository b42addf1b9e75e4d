"""`cluster daemon start|stop|restart|status` on the real testbed, with a stand-in daemon that
really runs from the app dir (tests.support.deploy_support.STANDIN) and serves GET /health.

Every test stops what it started (`daemons_stopped_after`) and uses an app dir of its own.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest

from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.errors import ConfigError, UsageError
from skeleton_app.nodes import Node
from skeleton_app.ops.daemon import (
    check_command,
    daemon_argv,
    daemon_control,
    health_check,
    parse_reply,
    systemctl_command,
)
from skeleton_app.ops.deploy import deploy
from skeleton_app.testing import testbed as tbm
from skeleton_app.testing.testbed import Testbed
from tests.support.deploy_support import (
    STANDIN,
    STANDIN_NAME,
    daemons_stopped_after,
    host_path,
    make_source,
    settings_of,
    unique_app_dir,
    variant,
)
from tests.support.helpers import skeleton


def _deployed(testbed: Testbed, tmp_path: Path, *, nodes: str = "node-0[1-6]", port: int = 8765,
              **sections: Any) -> tuple[Path, Settings, str]:
    """A config of our own and the stand-in deployed to its app dir on `nodes`."""
    app_dir = unique_app_dir("daemon")
    config = variant(testbed, tmp_path, app_dir=app_dir, port=port, **sections)
    settings = settings_of(config)
    with Cluster(settings) as cluster:
        result = deploy(cluster, cluster.select([nodes]),
                        source=make_source(tmp_path / "src", "A"))
        assert result.exit_code() == 0, result.to_json()
    return config, settings, app_dir


def _boot_id(testbed: Testbed) -> str:
    return tbm.host_exec(testbed, "node-01", ["cat", "/proc/sys/kernel/random/boot_id"]
                         ).stdout.strip()


def _start_time(testbed: Testbed, node: str, pid: int) -> int:
    """Field 22 of /proc/PID/stat inside the host, counted after the last ')'."""
    return int(_node_proc(testbed, node, pid, "stat").rsplit(")", 1)[1].split()[19])


def _node_proc(testbed: Testbed, node: str, pid: int, what: str) -> str:
    """/proc/PID/WHAT as seen inside the host's PID namespace ('' if there is no such pid)."""
    proc = tbm.host_exec(testbed, node, ["cat", f"/proc/{pid}/{what}"], check=False)
    return proc.stdout.replace("\0", " ") if proc.returncode == 0 else ""


# ------------------------------------------------------------------ pure parts


def test_parse_reply() -> None:
    reply = parse_reply("state=died pid=42\nmessage=the daemon exited within 1 s; the last"
                        " lines of logs/x.log:\n--- begin log_tail\nTraceback\nboom\n"
                        "--- end log_tail\n")
    assert reply.state == "died" and reply.pid == 42
    assert reply.log_tail == ("Traceback", "boom")
    assert "exited within" in (reply.message or "")
    stopped = parse_reply("state=stopped pid=7 signal=KILL\n")
    assert stopped.signal == "KILL"
    assert parse_reply("garbage\n").state == "error"


def testsystemctl_command_commands(settings: Settings) -> None:
    s = dataclasses.replace(settings, daemon=dataclasses.replace(
        settings.daemon, manager="systemd", sudo=True, user_unit=True, unit="skel@1.service"))
    start = systemctl_command(s, "start")
    assert start.startswith("sudo -n systemctl --user --no-ask-password start -- skel@1.service")
    assert "is-active -- skel@1.service" in start
    assert systemctl_command(s, "status") == (
        "systemctl --user --no-ask-password is-active -- skel@1.service")
    bad = dataclasses.replace(s, daemon=dataclasses.replace(s.daemon, unit="x; reboot"))
    with pytest.raises(ConfigError):
        systemctl_command(bad, "start")


def test_daemon_command_split(settings: Settings) -> None:
    def with_command(command: str) -> Settings:
        return dataclasses.replace(settings, daemon=dataclasses.replace(settings.daemon,
                                                                        command=command))

    assert daemon_argv(with_command("PYTHONPATH=. python3 -m skeleton_app daemon run")) == [
        "env", "PYTHONPATH=.", "python3", "-m", "skeleton_app", "daemon", "run"]
    assert check_command(with_command("./run-daemon.sh --port 8765")) == [
        "./run-daemon.sh", "--port", "8765"]  # any command: nothing looks for a marker
    with pytest.raises(ConfigError, match=r"daemon\.command"):
        check_command(with_command("python3 'unbalanced"))


# ------------------------------------------------------------------ process manager


def test_start_status_stop_are_idempotent(testbed: Testbed, tmp_path: Path) -> None:
    _config, settings, app_dir = _deployed(testbed, tmp_path)
    with daemons_stopped_after(settings) as cluster:
        nodes = cluster.select([])
        started = time.monotonic()
        result = daemon_control(cluster, nodes, "start")
        # Detached: the whole fan-out returns right after the grace period (0.5 s), instead
        # of the SSH channels staying open for the daemons' lives.
        assert time.monotonic() - started < 5
        assert result.exit_code() == 0, result.to_json()
        pids = {}
        for node in nodes:
            r = result[node.id]
            assert r.outcome.state == "started"
            pid = r.outcome.pid
            pids[node.id] = pid
            pid_file = host_path(testbed, node.id, f"{app_dir}/.skeleton-daemon.pid")
            assert pid_file.read_text().split()[0] == str(pid)
            assert STANDIN_NAME in _node_proc(testbed, node.id, pid, "cmdline")
            assert f"SKELETON_NODE_ID={node.id}" in _node_proc(testbed, node.id, pid, "environ")
            cwd = tbm.host_exec(testbed, node.id, ["readlink", f"/proc/{pid}/cwd"]).stdout
            assert cwd.strip() == app_dir
            log = host_path(testbed, node.id, f"{app_dir}/logs/skeleton-daemon.log")
            deadline = time.monotonic() + 5
            while "standin starting" not in log.read_text():
                assert time.monotonic() < deadline
                time.sleep(0.05)

        again = daemon_control(cluster, nodes, "start")
        assert again.exit_code() == 0
        assert {n: r.outcome.state for n, r in again.items()} == dict.fromkeys(pids,
                                                                               "already-running")
        assert {n: r.outcome.pid for n, r in again.items()} == pids

        status = daemon_control(cluster, nodes, "status")
        assert status.exit_code() == 0
        assert all(r.outcome.state == "running" for r in status.values())

        stopped = daemon_control(cluster, nodes, "stop")
        assert stopped.exit_code() == 0
        for node in nodes:
            assert stopped[node.id].outcome.state == "stopped"
            assert stopped[node.id].outcome.signal == "TERM"
            assert _node_proc(testbed, node.id, pids[node.id], "cmdline") == ""
            assert not host_path(testbed, node.id, f"{app_dir}/.skeleton-daemon.pid").exists()
        twice = daemon_control(cluster, nodes, "stop")
        assert twice.exit_code() == 0
        assert all(r.outcome.state == "not-running" for r in twice.values())
        down = daemon_control(cluster, nodes, "status")
        assert down.exit_code() == 1  # status of a stopped daemon: LSB exit 3 on each node
        assert all(r.exit_code == 3 for r in down.values())


def test_a_daemon_that_exits_at_once_is_reported_with_its_log(testbed: Testbed,
                                                              tmp_path: Path) -> None:
    crash = ("python3 -c \"import sys; print('skeleton_app: missing model x.bin');"
             " sys.exit(3)\"")
    config, settings, app_dir = _deployed(testbed, tmp_path, nodes="node-0[1-2]",
                                          daemon={"command": crash})
    with daemons_stopped_after(settings):
        proc = skeleton("cluster", "daemon", "start", "-n", "node-0[1-2]", config=config)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "died at start" in proc.stdout and "missing model x.bin" in proc.stdout
        assert "✗" in proc.stdout
        proc = skeleton("cluster", "daemon", "start", "-n", "node-01", "--json", config=config)
        data = json.loads(proc.stdout)["nodes"]["node-01"]["data"]
        assert data["state"] == "died"
        assert any("missing model x.bin" in line for line in data["log_tail"])
        assert not host_path(testbed, "node-01", f"{app_dir}/.skeleton-daemon.pid").exists()


def test_stale_pid_file_counts_as_stopped(testbed: Testbed, tmp_path: Path) -> None:
    _config, settings, app_dir = _deployed(testbed, tmp_path, nodes="node-03")
    pid_file = host_path(testbed, "node-03", f"{app_dir}/.skeleton-daemon.pid")
    pid_file.write_text(f"999999 12345 {_boot_id(testbed)}\n")
    with daemons_stopped_after(settings) as cluster:
        node = cluster.select(["node-03"])
        status = daemon_control(cluster, node, "status")
        assert status["node-03"].outcome.state == "not-running"
        assert "stale pid file" in status["node-03"].outcome.message
        started = daemon_control(cluster, node, "start")
        assert started.exit_code() == 0 and started["node-03"].outcome.state == "started"
        assert pid_file.read_text().split()[0] == str(started["node-03"].outcome.pid)


def test_pid_file_of_an_unrelated_process_is_left_alone(testbed: Testbed,
                                                        tmp_path: Path) -> None:
    _config, settings, app_dir = _deployed(testbed, tmp_path, nodes="node-04")
    with daemons_stopped_after(settings) as cluster:
        node = cluster.select(["node-04"])[0]
        # An unrelated long-running process on the node (PIDs get reused: its pid ends up in
        # our pid file).
        r = cluster.connector.run(node, "setsid -f sleep 1234.5 </dev/null >/dev/null 2>&1;"
                                        " sleep 0.2; pgrep -n -f 'sleep 1234.5'")
        pid = int(r.stdout.strip())
        try:
            pid_file = host_path(testbed, "node-04", f"{app_dir}/.skeleton-daemon.pid")
            # Its pid, recycled: a record with another start time.
            pid_file.write_text(f"{pid} {_start_time(testbed, 'node-04', pid) + 1} "
                                f"{_boot_id(testbed)}\n")
            stopped = daemon_control(cluster, [node], "stop")
            assert stopped.exit_code() == 0
            assert stopped["node-04"].outcome.state == "not-running"
            assert "left alone" in stopped["node-04"].outcome.message
            assert "sleep" in _node_proc(testbed, "node-04", pid, "cmdline")  # still alive
            # Its pid, recycled: a record with another start time.
            pid_file.write_text(f"{pid} {_start_time(testbed, 'node-04', pid) + 1} "
                                f"{_boot_id(testbed)}\n")
            status = daemon_control(cluster, [node], "status")
            assert status["node-04"].outcome.state == "not-running"
            started = daemon_control(cluster, [node], "start")
            assert started["node-04"].outcome.state == "started"
            assert started["node-04"].outcome.pid != pid
            assert "sleep" in _node_proc(testbed, "node-04", pid, "cmdline")
        finally:
            cluster.connector.run(node, f"kill {pid}")


def _all_started_healthy(cluster: Cluster) -> tuple[tuple[Node, ...], dict[str, int]]:
    """Start every node's daemon, healthy: the nodes and their daemons' pids."""
    nodes = cluster.select([])
    first = daemon_control(cluster, nodes, "start", wait_healthy=True, health_timeout=10)
    assert first.exit_code() == 0, first.to_json()
    return nodes, {n: r.outcome.pid for n, r in first.items()}


def test_rolling_restart_waits_for_health(testbed: Testbed, tmp_path: Path) -> None:
    config, settings, _app_dir = _deployed(testbed, tmp_path, port=8772)
    with daemons_stopped_after(settings) as cluster:
        nodes, old = _all_started_healthy(cluster)
        proc = skeleton("cluster", "daemon", "restart", "--batch", "2", "--wait-healthy",
                        "--health-timeout", "10", "--json", config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        data = json.loads(proc.stdout)
        for node in nodes:
            d = data["nodes"][node.id]["data"]
            assert d["stopped_pid"] == old[node.id]
            assert d["pid"] != old[node.id]
            assert d["healthy"] is True and d["health"]["pid"] == d["pid"]
            assert d["health"]["node"] == node.id


def test_rolling_restart_stops_at_the_first_node_that_does_not_come_back(
        testbed: Testbed, tmp_path: Path) -> None:
    config, settings, app_dir = _deployed(testbed, tmp_path, port=8773)
    with daemons_stopped_after(settings) as cluster:
        nodes, old = _all_started_healthy(cluster)
        # node-03's next start runs but never answers /health.
        host_path(testbed, "node-03", f"{app_dir}/.no-health").write_text("")
        proc = skeleton("cluster", "daemon", "restart", "--batch", "2", "--wait-healthy",
                        "--health-timeout", "2", config=config)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "node-03 did not come back healthy" in proc.stdout
        assert "not restarted: node-[05-06]" in proc.stdout
        after = daemon_control(cluster, nodes, "status")
        pids = {n: r.outcome.pid for n, r in after.items()}
        for node in ("node-01", "node-02", "node-03", "node-04"):
            assert pids[node] != old[node], node  # restarted (batches 1 and 2)
        for node in ("node-05", "node-06"):
            assert pids[node] == old[node], node  # never touched

        result = daemon_control(cluster, nodes, "restart", batch=1, wait_healthy=True,
                                health_timeout=2)
        assert list(result) == ["node-01", "node-02", "node-03"]
        assert result["node-03"].exit_code == 1 and not result["node-03"].outcome.healthy
        assert "node-03" in result.warnings[0] and "node-[04-06]" in result.warnings[0]


def test_bad_daemon_command_or_batch_is_an_error(testbed: Testbed, tmp_path: Path) -> None:
    config = variant(testbed, tmp_path, daemon={"command": "python3 'unbalanced"})
    proc = skeleton("cluster", "daemon", "start", config=config)
    assert proc.returncode == 2 and "daemon.command" in proc.stderr
    with Cluster(settings_of(config)) as cluster, pytest.raises(UsageError):
        daemon_control(cluster, cluster.nodes, "restart", batch=0)


RUN_DAEMON = """#!/bin/sh
# Any daemon: a wrapper script that execs a server whose command line names nothing of ours.
exec python3 srv.py "$1"
"""


def test_any_daemon_command_works(testbed: Testbed, tmp_path: Path) -> None:
    app_dir = unique_app_dir("anycmd")
    config = variant(testbed, tmp_path, app_dir=app_dir, port=8781,
                     daemon={"command": "./run-daemon.sh 8781"})
    settings = settings_of(config)
    src = make_source(tmp_path / "src", "A", extra={"run-daemon.sh": RUN_DAEMON,
                                                    "srv.py": STANDIN})
    (src / "run-daemon.sh").chmod(0o755)
    with daemons_stopped_after(settings) as cluster:
        nodes = cluster.select(["node-0[1-2]"])
        assert deploy(cluster, nodes, source=src).exit_code() == 0
        started = daemon_control(cluster, nodes, "start", wait_healthy=True, health_timeout=10)
        assert started.exit_code() == 0, started.to_json()
        for node in nodes:
            pid = started[node.id].outcome.pid
            cmdline = _node_proc(testbed, node.id, pid, "cmdline")
            assert "srv.py 8781" in cmdline and "skeleton" not in cmdline
        status = skeleton("cluster", "daemon", "status", "-n", "node-0[1-2]", config=config)
        assert status.returncode == 0 and status.stdout.count("running (pid") == 2, status.stdout
        stopped = daemon_control(cluster, nodes, "stop")
        assert stopped.exit_code() == 0
        for node in nodes:
            assert stopped[node.id].outcome.state == "stopped"
            assert _node_proc(testbed, node.id, started[node.id].outcome.pid, "cmdline") == ""


@pytest.mark.parametrize("corruption", ["-1", "0", "1", "garbage", "deleted", "recycled"])
def test_a_corrupt_pid_file_never_orphans_the_daemon(testbed: Testbed, tmp_path: Path,
                                                     corruption: str) -> None:
    # The issue's reproduction: a pid file holding -1, 0, 1 or garbage made `stop` report "not
    # running" and orphan the daemon, whose next start died with "Address already in use".
    _config, settings, app_dir = _deployed(testbed, tmp_path, nodes="node-05", port=8782)
    with daemons_stopped_after(settings) as cluster:
        node = cluster.select(["node-05"])[0]
        first = daemon_control(cluster, [node], "start", wait_healthy=True, health_timeout=10)
        assert first.exit_code() == 0, first.to_json()
        pid = first["node-05"].outcome.pid
        pid_file = host_path(testbed, "node-05", f"{app_dir}/.skeleton-daemon.pid")
        r = cluster.connector.run(node, "setsid -f sleep 2345.5 </dev/null >/dev/null 2>&1;"
                                        " sleep 0.2; pgrep -n -f 'sleep 2345.5'")
        decoy = int(r.stdout.strip())
        try:
            if corruption == "deleted":
                pid_file.unlink()
            elif corruption == "recycled":
                pid_file.write_text(f"{decoy} {_start_time(testbed, 'node-05', decoy) + 1} "
                                    f"{_boot_id(testbed)}\n")
            else:
                pid_file.write_text(f"{corruption}\n")
            status = daemon_control(cluster, [node], "status")
            assert status["node-05"].outcome.state == "running", status.to_json()
            assert status["node-05"].outcome.pid == pid
            stopped = daemon_control(cluster, [node], "stop")
            assert stopped["node-05"].outcome.state == "stopped", stopped.to_json()
            assert stopped["node-05"].outcome.pid == pid
            assert _node_proc(testbed, "node-05", pid, "cmdline") == ""
            assert "sleep" in _node_proc(testbed, "node-05", decoy, "cmdline")  # spared
            again = daemon_control(cluster, [node], "start", wait_healthy=True,
                                   health_timeout=10)
            assert again.exit_code() == 0, again.to_json()  # the port was free again
            assert again["node-05"].outcome.state == "started"
        finally:
            cluster.connector.run(node, f"kill {decoy}")


# ------------------------------------------------------------------ systemd manager


FAKE_SUDO = """#!/bin/sh
# Like sudo for a user without NOPASSWD: -n refuses at once; without -n it waits for a password.
if [ "$1" = -n ]; then
    if [ -e /usr/local/bin/.nopasswd ]; then shift; exec "$@"; fi
    echo "sudo: a password is required" >&2
    exit 1
fi
printf '[sudo] password for %s: ' "$(id -un)" >&2
read -r password
sleep 600
"""

FAKE_SYSTEMCTL = """#!/bin/sh
# Enough of systemctl for one unit: state in ~/.fake-unit-state, every call logged.
printf '%s\\n' "$*" >>"$HOME/systemctl.log"
state=$(cat "$HOME/.fake-unit-state" 2>/dev/null || echo inactive)
for arg; do
    case $arg in
        start|restart) echo active >"$HOME/.fake-unit-state"; exit 0 ;;
        stop) echo inactive >"$HOME/.fake-unit-state"; exit 0 ;;
        is-active) echo "$state"; [ "$state" = active ]; exit ;;
    esac
done
exit 1
"""


def test_systemd_manager_with_sudo_never_waits_for_a_password(testbed: Testbed,
                                                              tmp_path: Path) -> None:
    node = "node-06"
    config = variant(testbed, tmp_path, daemon={"manager": "systemd", "sudo": True,
                                                "unit": "skeleton-daemon"})
    home = testbed.host(node).home
    # Our own sudo and systemctl on this host only: a tmpfs over /usr/local/bin (first in
    # sshd's PATH) inside its mount namespace.
    tbm.host_exec(testbed, node, ["mount", "-t", "tmpfs", "-o", "size=1M,mode=0755",
                                  "skeleton-fake-bin", "/usr/local/bin"])
    try:
        for name, text in (("sudo", FAKE_SUDO), ("systemctl", FAKE_SYSTEMCTL)):
            tbm.host_exec(testbed, node, ["sh", "-c", f"cat >/usr/local/bin/{name} &&"
                                          f" chmod 755 /usr/local/bin/{name}"], input=text)
        with Cluster(settings_of(config)) as cluster:
            target = cluster.select([node])
            started = time.monotonic()
            result = daemon_control(cluster, target, "start")
            assert time.monotonic() - started < 10  # a prompt would have hung until timeout
            r = result[node]
            assert r.exit_code == 1 and "password" in r.outcome.message
            assert "NOPASSWD" in r.outcome.message

            tbm.host_exec(testbed, node, ["touch", "/usr/local/bin/.nopasswd"])
            assert daemon_control(cluster, target, "start")[node].outcome.state == "active"
            status = daemon_control(cluster, target, "status")
            assert status.exit_code() == 0 and status[node].outcome.state == "active"
            restarted = daemon_control(cluster, target, "restart")
            assert restarted[node].outcome.state == "active"
            stopped = daemon_control(cluster, target, "stop")
            assert stopped.exit_code() == 0
            down = daemon_control(cluster, target, "status")
            assert down.exit_code() == 1 and down[node].outcome.state == "inactive"
            calls = (home / "systemctl.log").read_text().splitlines()
            assert "--no-ask-password start -- skeleton-daemon" in calls
            assert "--no-ask-password stop -- skeleton-daemon" in calls
    finally:
        tbm.host_exec(testbed, node, ["umount", "-l", "/usr/local/bin"])
        for leftover in ("systemctl.log", ".fake-unit-state"):
            (home / leftover).unlink(missing_ok=True)


def test_health_check_reports_a_silent_node(testbed: Testbed, settings: Settings) -> None:
    with Cluster(settings) as cluster:
        node = dataclasses.replace(cluster.nodes[0], api_port=8799)  # nothing listens there
        started = time.monotonic()
        r = health_check(cluster, node, timeout=1.5)
        assert time.monotonic() - started < 10
        assert r.exit_code == 1 and r.outcome.healthy is False
        assert "8799" in r.outcome.message


def test_stop_escalates_to_sigkill_after_the_grace_period(testbed: Testbed,
                                                          tmp_path: Path) -> None:
    stubborn = ("python3 -c \"import signal, time;"
                " signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)\" skeleton_app")
    _config, settings, _app_dir = _deployed(testbed, tmp_path, nodes="node-02",
                                            daemon={"command": stubborn, "stop_grace": 0.5})
    with daemons_stopped_after(settings) as cluster:
        node = cluster.select(["node-02"])
        started = daemon_control(cluster, node, "start")
        assert started.exit_code() == 0, started.to_json()
        pid = started["node-02"].outcome.pid
        stopped = daemon_control(cluster, node, "stop")
        assert stopped.exit_code() == 0
        assert stopped["node-02"].outcome.state == "stopped"
        assert stopped["node-02"].outcome.signal == "KILL"
        assert _node_proc(testbed, "node-02", pid, "cmdline") == ""
