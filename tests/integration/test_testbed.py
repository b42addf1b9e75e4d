"""The local test cluster, against real sshd with real OpenSSH clients and strict host keys.

Most tests share the session `testbed` (6 hosts); a test that breaks a host restores it
and proves so by logging in again. Tests of `up`/`down` themselves use their own testbed.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from skeleton_app.config import Settings
from skeleton_app.errors import SelectionError, TestbedError, UsageError
from skeleton_app.testing import testbed as tb_mod
from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import bootstrap_testbed, skeleton

REPO_ROOT = Path(__file__).resolve().parents[2]
MakeTestbed = Callable[..., Testbed]


def ssh(
    tb: Testbed,
    target: str,
    command: str,
    *,
    known_hosts: Path | None = None,
    check: bool = True,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """OpenSSH as a user would run it against the testbed: strict, no prompts."""
    argv = [
        "ssh", "-F", "/dev/null", "-i", str(tb.identity_file),
        "-o", f"UserKnownHostsFile={known_hosts or tb.known_hosts}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
        "-o", "ConnectTimeout=5", f"skeleton@{target}", command,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"ssh {target} {command!r}: exit {proc.returncode}: {proc.stderr}")
    return proc


def assert_healthy(tb: Testbed, host_id: str) -> None:
    """The host answers over SSH as itself: the fault was undone."""
    assert ssh(tb, tb.host(host_id).ip, "hostname").stdout.strip() == host_id


def connect_outcome(ip: str, timeout: float = 1.5) -> str:
    """What a client sees on ip:22: 'banner', 'silent' (TCP ok, no banner), 'refused',
    'timeout' or 'unreachable'."""
    try:
        with socket.create_connection((ip, 22), timeout=timeout) as sock:
            sock.settimeout(timeout)
            try:
                data = sock.recv(64)
            except TimeoutError:
                return "silent"
            return "banner" if data.startswith(b"SSH-") else "silent"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError:
        return "unreachable"


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not reaped


def our_leftovers(tb: Testbed) -> list[str]:
    """Anything of this testbed's instance still on the machine."""
    found: list[str] = []
    prefix = tb_mod.netns_name(tb.instance, "")
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [line for line in netns.splitlines() if line.startswith(prefix)]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name == tb.bridge or any(name == h.veth for h in tb.hosts):
            found.append(name)
    for h in tb.hosts:
        for pid in (h.launcher_pid, h.init_pid):
            if running(pid) and h.namespace in cmdline(pid):
                found.append(f"pid {pid}")
    if tb.state_dir.exists():
        found.append(str(tb.state_dir))
    return found


# ---------------------------------------------------------------------------- the hosts


def test_every_host_answers_as_itself_with_strict_host_keys(testbed: Testbed) -> None:
    for host in testbed.hosts:
        out = ssh(testbed, host.ip, "hostname; id -un; pwd").stdout.split()
        assert out == [host.id, "skeleton", "/home/skeleton"]


def test_a_wrong_host_key_is_refused(testbed: Testbed, tmp_path: Path) -> None:
    # node-01's address listed with node-02's key: checking really is strict.
    first, second = testbed.hosts[0], testbed.hosts[1]
    key = second.host_key_pub.read_text().split()[:2]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{first.ip} {' '.join(key)}\n")
    proc = ssh(testbed, first.ip, "true", known_hosts=wrong, check=False)
    assert proc.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in proc.stderr or "verification failed" in proc.stderr


def test_an_unknown_host_is_refused(testbed: Testbed, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    proc = ssh(testbed, testbed.hosts[0].ip, "true", known_hosts=empty, check=False)
    assert proc.returncode == 255
    assert "verification failed" in proc.stderr


def test_each_host_has_its_own_app_dir(testbed: Testbed) -> None:
    one, two = testbed.hosts[0], testbed.hosts[1]
    marker = f"written-on-{one.id}"
    try:
        ssh(testbed, one.ip, f"echo {marker} > /home/skeleton/app/marker.txt")
        assert ssh(testbed, one.ip, "cat /home/skeleton/app/marker.txt").stdout.strip() == marker
        other = ssh(testbed, two.ip, "test -e /home/skeleton/app/marker.txt", check=False)
        assert other.returncode == 1
        # Same path on every host, and the controller sees it under the host's own dir.
        assert (one.app_dir / "marker.txt").read_text().strip() == marker
        assert not (two.app_dir / "marker.txt").exists()
        owner = ssh(testbed, two.ip, "stat -c %U /home/skeleton/app").stdout.strip()
        assert owner == "skeleton"
    finally:
        (one.app_dir / "marker.txt").unlink(missing_ok=True)


def test_each_host_has_its_own_process_table(testbed: Testbed) -> None:
    # PID 1 is the host's own init; the machine's processes are invisible.
    out = ssh(testbed, testbed.hosts[0].ip, "tr '\\0' ' ' < /proc/1/cmdline; echo; ps -e | wc -l")
    cmdline, count = out.stdout.strip().rsplit("\n", 1)
    assert tb_mod.MARKER in cmdline and testbed.hosts[0].namespace in cmdline
    assert int(count) < 20


def test_ssh_config_for_openssh_users(testbed: Testbed) -> None:
    host = testbed.hosts[-1]
    proc = subprocess.run(["ssh", "-F", str(testbed.ssh_config_path), host.id, "hostname"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, host.id), proc.stderr


def test_hosts_cannot_be_routed_beyond_the_testbed(testbed: Testbed) -> None:
    # Checked without sending a packet anywhere: the bridge does not forward.
    path = Path(f"/proc/sys/net/ipv4/conf/{testbed.bridge}/forwarding")
    assert path.read_text().strip() == "0"


def test_node_to_node_ssh_by_id_and_by_address(testbed: Testbed) -> None:
    one, two = testbed.hosts[0], testbed.hosts[1]
    out = ssh(testbed, one.ip, f"ssh {two.id} hostname && ssh {two.ip} hostname").stdout
    assert out.split() == [two.id, two.id]


def test_node_to_node_checking_is_strict(testbed: Testbed) -> None:
    one, two = testbed.hosts[0], testbed.hosts[1]
    proc = ssh(testbed, one.ip,
               f"ssh -o UserKnownHostsFile=/dev/null {two.id} hostname", check=False)
    assert proc.returncode == 255
    assert "verification failed" in proc.stderr


def test_config_yaml_describes_the_hosts(testbed: Testbed, settings: Settings) -> None:
    assert settings.source == str(testbed.config_path)
    assert [n.id for n in settings.nodes] == [h.id for h in testbed.hosts]
    assert [n.host for n in settings.nodes] == [h.ip for h in testbed.hosts]
    assert settings.ssh.user == "skeleton"
    assert settings.ssh.host_key_policy == "strict"
    assert settings.ssh.identity_file == str(testbed.identity_file)
    assert settings.ssh.known_hosts == str(testbed.known_hosts)
    assert settings.app.dir == tb_mod.APP_DIR
    # The host's own virtualenv (made by `cluster bootstrap`), never the controller's.
    assert settings.daemon.command == (
        f".venv/bin/python -m skeleton_app daemon run --config {testbed.config_path}")
    assert settings.registry.dsn is None
    for i, node in enumerate(settings.nodes, start=1):
        assert "testbed" in node.roles
        assert ("stt" in node.roles) == (i % 2 == 1)
        assert ("tts" in node.roles) == (i % 2 == 0)


def test_known_hosts_holds_the_real_host_keys(testbed: Testbed) -> None:
    # Each host by id (keys are pinned per node id) and by address; ids that other tests
    # use for these hosts get pinned after them on first use.
    lines = testbed.known_hosts.read_text().splitlines()[:2 * len(testbed.hosts)]
    for i, host in enumerate(testbed.hosts):
        key = host.host_key_pub.read_text().split()[1]
        assert lines[2 * i:2 * i + 2] == [f"{host.id} ssh-ed25519 {key}",
                                          f"{host.ip} ssh-ed25519 {key}"]


def test_the_controllers_checkout_and_virtualenv_are_invisible_in_the_hosts(
        testbed: Testbed) -> None:
    """A host runs its own packages (bootstrapped), never the controller's: they are hidden
    under an empty tmpfs there, so a missing set-up step cannot hide."""
    assert sys.prefix.startswith(str(REPO_ROOT))  # the suite runs from the checkout's .venv
    out = ssh(testbed, testbed.hosts[0].ip,
              f"ls -A {shlex.quote(str(REPO_ROOT))} | wc -l; test -e {shlex.quote(sys.executable)}"
              " || echo no-venv; python3 -c 'import sys; print(sys.version_info[0])'")
    assert out.stdout.split() == ["0", "no-venv", "3"], out.stdout
    assert (REPO_ROOT / "pyproject.toml").is_file()  # still there for the controller


def test_status_and_load(testbed: Testbed) -> None:
    rows = tb_mod.status(testbed.state_dir)
    assert [r.id for r in rows] == list(testbed.ids)
    assert all(r.alive and r.reachable for r in rows)
    assert tb_mod.load(testbed.state_dir) == testbed
    state = json.loads((testbed.state_dir / "state.json").read_text())
    assert state["bridge"] == testbed.bridge and state["subnet"] == testbed.subnet
    assert [h["launcher_pid"] for h in state["hosts"]] == [h.launcher_pid for h in testbed.hosts]


def test_names_follow_the_instance(testbed: Testbed) -> None:
    n = testbed.instance
    assert testbed.subnet == f"10.213.{n}.0/24" and testbed.gateway == f"10.213.{n}.1"
    assert testbed.bridge == f"sktb{n}"
    for i, h in enumerate(testbed.hosts, start=1):
        assert h.namespace == f"sktb{n}-{h.id}"
        assert h.veth == f"sk{n}h{i}" and len(h.veth) <= 15
        assert h.ip == f"10.213.{n}.{10 + i}"


# ---------------------------------------------------------------------------- fault injectors


def test_host_exec_runs_as_root_inside_the_host(testbed: Testbed) -> None:
    host = testbed.hosts[2]
    out = tb_mod.host_exec(testbed, host.id, ["sh", "-c", "hostname; id -u; ip -o -4 addr"])
    name, uid, addrs = out.stdout.split("\n", 2)
    assert (name, uid) == (host.id, "0")
    assert f"{host.ip}/24" in addrs
    failed = tb_mod.host_exec(testbed, host.id, ["false"], check=False)
    assert failed.returncode == 1
    with pytest.raises(TestbedError):
        tb_mod.host_exec(testbed, host.id, ["false"])


def test_stop_and_start_sshd(testbed: Testbed) -> None:
    host = testbed.hosts[2]
    ssh(testbed, host.ip, "echo kept > app/kept.txt")
    # A session that is running when sshd stops survives it, as on a real machine.
    session = subprocess.Popen(
        ["ssh", "-F", "/dev/null", "-i", str(testbed.identity_file),
         "-o", f"UserKnownHostsFile={testbed.known_hosts}", "-o", "BatchMode=yes",
         f"skeleton@{host.ip}", "sleep 2; echo survived"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.7)
        tb_mod.stop_sshd(testbed, host.id)
        assert connect_outcome(host.ip) == "refused"
        out, err = session.communicate(timeout=20)
        assert out.strip() == "survived", err
    finally:
        session.kill()
        tb_mod.start_sshd(testbed, host.id)
    assert_healthy(testbed, host.id)  # same host key (strict known_hosts still matches)
    assert ssh(testbed, host.ip, "cat app/kept.txt").stdout.strip() == "kept"
    (host.app_dir / "kept.txt").unlink()
    for _ in range(3):  # back to back, and twice in a row each: no lost restart
        tb_mod.stop_sshd(testbed, host.id)
        tb_mod.stop_sshd(testbed, host.id)
        tb_mod.start_sshd(testbed, host.id)
        tb_mod.start_sshd(testbed, host.id)
    assert_healthy(testbed, host.id)


def test_orphans_are_reaped_inside_a_host(testbed: Testbed) -> None:
    # Daemons started over SSH are reparented to the host's PID 1, which must reap them.
    host = testbed.hosts[2]
    ssh(testbed, host.ip, "for i in 1 2 3; do setsid sh -c 'sleep 0.2' >/dev/null 2>&1 & done")
    time.sleep(1.0)
    states = tb_mod.host_exec(testbed, host.id, ["ps", "-e", "-o", "stat="]).stdout.split()
    assert not [s for s in states if s.startswith("Z")]


def test_freeze_and_thaw(testbed: Testbed) -> None:
    host = testbed.hosts[3]
    try:
        pids = tb_mod.freeze(testbed, host.id)
        assert host.init_pid in pids
        states = {Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] for p in pids}
        assert states == {"T"}  # every process of the host, PID 1 included, is stopped
        assert connect_outcome(host.ip) == "silent"  # TCP accepts, sshd never answers
    finally:
        tb_mod.thaw(testbed, host.id)
    assert_healthy(testbed, host.id)


def test_blackhole_towards_the_controller(testbed: Testbed) -> None:
    host = testbed.hosts[4]
    try:
        tb_mod.blackhole(testbed, host.id)
        assert connect_outcome(host.ip) == "timeout"
        # The other hosts still reach it: only the controller's address is dropped.
        other = testbed.hosts[0]
        assert ssh(testbed, other.ip, f"ssh {host.id} hostname").stdout.strip() == host.id
    finally:
        tb_mod.clear_blackhole(testbed, host.id)
    assert_healthy(testbed, host.id)
    tb_mod.clear_blackhole(testbed, host.id)  # clearing twice is fine


def test_link_down_and_up(testbed: Testbed) -> None:
    host = testbed.hosts[4]
    try:
        tb_mod.link_down(testbed, host.id)
        assert connect_outcome(host.ip) in ("timeout", "unreachable")
    finally:
        tb_mod.link_up(testbed, host.id)
    assert_healthy(testbed, host.id)
    # The default route is back: the host reaches the gateway and its neighbours.
    out = tb_mod.host_exec(testbed, host.id, ["ip", "route", "show", "default"]).stdout
    assert f"via {testbed.gateway}" in out


def test_small_disk(testbed: Testbed) -> None:
    host = testbed.hosts[5]
    ssh(testbed, host.ip, "echo before > app/before.txt")
    try:
        with tb_mod.small_disk(testbed, host.id, size="1M") as app_dir:
            assert app_dir == tb_mod.APP_DIR
            full = ssh(testbed, host.ip, "head -c 2000000 /dev/zero > app/big", check=False)
            assert full.returncode != 0 and "No space left" in full.stderr
            assert ssh(testbed, host.ip, "ls app").stdout.split() == ["big"]
            # Only this host: its neighbour's app dir is untouched.
            df = ssh(testbed, testbed.hosts[0].ip, "df --output=target app").stdout
            assert df.split()[-1] == "/home/skeleton"
        # other tests may have left files in the app dir: only ours matters here
        after = ssh(testbed, host.ip, "ls app").stdout.split()
        assert "before.txt" in after and "big" not in after
        ssh(testbed, host.ip, "head -c 2000000 /dev/zero > app/big && rm app/big")
    finally:
        (host.app_dir / "before.txt").unlink(missing_ok=True)


def test_hide_command(testbed: Testbed) -> None:
    host = testbed.hosts[5]
    try:
        tb_mod.hide_command(testbed, host.id, "/usr/bin/rsync")
        hidden = ssh(testbed, host.ip, "rsync --version", check=False)
        assert hidden.returncode == 127 and "not found" in hidden.stderr
        # Other hosts, and the machine itself, keep their rsync.
        assert ssh(testbed, testbed.hosts[0].ip, "rsync --version").returncode == 0
        assert subprocess.run(["rsync", "--version"], capture_output=True).returncode == 0
    finally:
        tb_mod.unhide_command(testbed, host.id, "/usr/bin/rsync")
    assert ssh(testbed, host.ip, "rsync --version").returncode == 0


def tbf_rate(tb: Testbed, host_id: str) -> tuple[int | None, int | None]:
    """The tbf rate in bytes/s on the host-side veth and on eth0 inside the host
    (None: no tbf)."""
    host = tb.host(host_id)

    def rate(argv: list[str]) -> int | None:
        qdiscs = json.loads(subprocess.run(argv, capture_output=True, text=True,
                                           check=True).stdout)
        tbf = [q for q in qdiscs if q["kind"] == "tbf"]
        return int(tbf[0]["options"]["rate"]) if tbf else None

    return (rate(["tc", "-j", "qdisc", "show", "dev", host.veth]),
            rate(["tc", "-j", "-n", host.namespace, "qdisc", "show", "dev", "eth0"]))


def test_set_rate_shapes_both_directions_and_is_undone(testbed: Testbed) -> None:
    host = testbed.hosts[1]
    try:
        shaped = tb_mod.set_rate(testbed, host.id, "40mbit")
        assert shaped.host(host.id).rate == "40mbit"
        assert tb_mod.load(testbed.state_dir).host(host.id).rate == "40mbit"
        assert tbf_rate(testbed, host.id) == (5_000_000, 5_000_000)
    finally:
        restored = tb_mod.set_rate(testbed, host.id, None)
    assert restored.host(host.id).rate is None
    assert tbf_rate(testbed, host.id) == (None, None)
    assert_healthy(testbed, host.id)


def test_injectors_reject_unknown_hosts_and_bad_values(testbed: Testbed) -> None:
    with pytest.raises(SelectionError, match="node-01"):
        tb_mod.host_exec(testbed, "nope", ["true"])
    with pytest.raises(UsageError):
        tb_mod.set_rate(testbed, testbed.hosts[0].id, "fast")
    with pytest.raises(UsageError):
        tb_mod.blackhole(testbed, testbed.hosts[0].id, "not-an-ip")
    with pytest.raises(UsageError):
        tb_mod.hide_command(testbed, testbed.hosts[0].id, "rsync")


# ---------------------------------------------------------------------------- up and down


def test_down_leaves_nothing_and_is_safe_twice(make_testbed: MakeTestbed) -> None:
    tb = make_testbed(2, rate="100mbit")
    assert tbf_rate(tb, tb.hosts[0].id) == (12_500_000, 12_500_000)
    before = our_leftovers(tb)
    assert tb.bridge in before and tb.hosts[1].veth in before
    assert f"pid {tb.hosts[0].init_pid}" in before
    # A process started inside a host dies with it.
    tb_mod.host_exec(tb, tb.hosts[0].id, ["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 &"])
    removed = tb_mod.down(tb.state_dir)
    assert "stopped 2 host(s)" in removed
    assert our_leftovers(tb) == []
    assert not any(cmdline(int(p))[:2] == ["sleep", "300"] and running(int(p))
                   for p in os.listdir("/proc") if p.isdigit())
    assert tb_mod.down(tb.state_dir, instance=tb.instance) == []


def test_down_after_a_crash_sweeps_by_name(make_testbed: MakeTestbed) -> None:
    tb = make_testbed(2)
    # The state file is gone, as after a crash in the middle of `up`.
    (tb.state_dir / "state.json").unlink()
    removed = tb_mod.down(tb.state_dir, instance=tb.instance)
    assert "killed 4 leftover process(es)" in removed
    assert our_leftovers(tb) == []


def test_down_without_state_leaves_what_only_bears_our_names(tmp_path: Path) -> None:
    # A bridge and a link named like instance 17's, made by someone else (here: this test, in
    # the suite's own network namespace): `down` with no state for the instance must leave
    # them, and say so.
    instance = 17  # never claimed automatically (AUTO_INSTANCES starts at 20)
    bridge, veth = tb_mod.bridge_name(instance), tb_mod.veth_name(instance, 0)
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "sk17peer"],
                   check=True)
    try:
        state = tmp_path / "no-state"
        lines = tb_mod.down(state, instance=instance)
        assert any(ln.startswith(f"left bridge {bridge}:") for ln in lines), lines
        assert any(ln.startswith(f"left {veth}:") for ln in lines), lines
        assert not [ln for ln in lines if not ln.startswith("left ")], lines
        cli = skeleton("testbed", "down", "--instance", str(instance), "--dir", str(state))
        assert cli.returncode == 0 and cli.stdout.strip() == "nothing to remove", cli.stdout
        assert f"skeleton: warning: left bridge {bridge}" in cli.stderr
        for name in (bridge, veth):  # both still there
            assert subprocess.run(["ip", "link", "show", "dev", name],
                                  capture_output=True).returncode == 0, name
    finally:
        for name in (bridge, veth):
            subprocess.run(["ip", "link", "del", name], check=False)


def test_up_refuses_an_existing_testbed(testbed: Testbed) -> None:
    with pytest.raises(TestbedError, match="skeleton testbed down"):
        tb_mod.up(2, state_dir=testbed.state_dir, instance=testbed.instance)
    # ... and an instance in use, whatever the state dir.
    with pytest.raises(TestbedError, match="in use"):
        tb_mod.up(2, state_dir="/tmp/skeleton-testbed-never-used", instance=testbed.instance)
    assert not Path("/tmp/skeleton-testbed-never-used").exists()
    assert all(r.reachable for r in tb_mod.status(testbed.state_dir))  # untouched


def test_up_refuses_a_state_dir_another_user_made(testbed: Testbed, tmp_path: Path) -> None:
    """The default state dir is a fixed name under /tmp: another user could make it first and
    plant links where root will write the cluster's private key."""
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    nobody = pwd.getpwnam("nobody")
    planted = Path(f"/tmp/skeleton-testbed-planted-{os.getpid()}")
    planted.mkdir(mode=0o777)
    try:
        planted.chmod(0o777)
        os.chown(planted, nobody.pw_uid, nobody.pw_gid)
        os.symlink(secret, planted / "id_ed25519")
        with pytest.raises(TestbedError, match=r"owned by uid \d+, not by this user: refusing it"):
            tb_mod.up(2, state_dir=planted, instance=testbed.instance)
        os.chown(planted, 0, 0)
        with pytest.raises(TestbedError, match="writable by group or others"):
            tb_mod.up(2, state_dir=planted, instance=testbed.instance)
        assert secret.read_text() == "root only\n"
    finally:
        (planted / "id_ed25519").unlink()
        planted.rmdir()


def test_up_rejects_bad_arguments() -> None:
    with pytest.raises(UsageError):
        tb_mod.up(0)
    with pytest.raises(UsageError):
        tb_mod.up(3, ["a", "b"])
    with pytest.raises(UsageError):
        tb_mod.up(names=["ok", "-bad"])
    with pytest.raises(UsageError):
        tb_mod.up(names=["a", "a"])
    with pytest.raises(UsageError):
        tb_mod.up(2, instance=201)
    with pytest.raises(UsageError):
        tb_mod.up(2, rate="quick")
    with pytest.raises(UsageError):
        tb_mod.up(2, roles={"node-09": ["x"]})
    with pytest.raises(UsageError):
        tb_mod.up(2, state_dir="/tmp/has space")


def test_up_without_root_fails_with_one_clear_line(tmp_path: Path) -> None:
    state = tmp_path / "never"
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         "import sys\nfrom skeleton_app.testing import testbed\n"
         "try:\n    testbed.up(2, state_dir=sys.argv[1])\n"
         "except Exception as exc:\n    print(f'{type(exc).__name__}: {exc}'); sys.exit(1)\n",
         str(state)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == (
        "TestbedError: skeleton testbed needs root (network namespaces): run it with sudo\n"
    )
    assert not state.exists()


@pytest.mark.postgres  # up(db=True) starts one, without the postgres fixtures
def test_named_hosts_with_roles_and_a_database(make_testbed: MakeTestbed) -> None:
    tb = make_testbed(names=["alpha", "beta"], roles={"beta": ["gpu"]}, db=True)
    assert tb.ids == ("alpha", "beta")
    assert tb.host("alpha").roles == ("testbed", "stt")
    assert tb.host("beta").roles == ("gpu",)
    assert tb.db is not None
    with psycopg.connect(tb.db.dsn, connect_timeout=5) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    # A host reaches the database through the gateway, as the daemons will.
    probe = ("import sys, psycopg\n"
             "with psycopg.connect(sys.argv[1], connect_timeout=5) as c:\n"
             "    print(c.execute('select current_user').fetchone()[0])\n")
    # With the host's own psycopg (its bootstrapped venv); ssh sends one shell string.
    python = bootstrap_testbed(tb)
    proc = ssh(tb, tb.host("beta").ip, shlex.join([python, "-c", probe, tb.db.host_dsn]))
    assert proc.stdout.strip() == "skeleton"
    # Each host has its own credentials for its daemon (never the operator's DSN above):
    # a node role of its own, in the default registry.node_dsn_file, readable by it alone.
    roles = set()
    for host in tb.hosts:
        dsn = ssh(tb, host.ip, "cat ~/.config/skeleton/node.dsn").stdout.strip()
        proc = ssh(tb, host.ip, shlex.join([python, "-c", probe, dsn]))
        assert proc.stdout.strip().startswith("skeleton_node_"), proc.stdout + proc.stderr
        roles.add(proc.stdout.strip())
        st = (host.home / ".config" / "skeleton" / "node.dsn").stat()
        assert st.st_mode & 0o077 == 0 and st.st_uid == (host.home / ".ssh").stat().st_uid
    assert len(roles) == 2
    text = tb.config_path.read_text()
    assert tb.db.host_dsn in text and tb.gateway in tb.db.host_dsn
    tb_mod.down(tb.state_dir)
    assert not running(tb.db.pid)
    assert not tb.db.dir.exists()
