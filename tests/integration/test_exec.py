"""`cluster exec` and the SSH layer, against real sshd hosts (the session testbed).

Every fault test checks three things: the faulty node's error kind, that every other
node's result is intact, and the exit code contract.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings, load_config
from skeleton_app.errors import NodeErrorKind
from skeleton_app.ssh.pool import Connector
from skeleton_app.ssh.runner import RunOptions
from skeleton_app.testing import testbed as tb
from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import bed_nodes, config_variant, skeleton


def cluster_for(path: Path) -> Cluster:
    return Cluster.from_config(settings=load_config(path, env={}))


def python_with_home(home: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter whose ~ is `home` (so its ~/.ssh/config applies)."""
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)


# ---------------------------------------------------------------- exactness and output


def test_exec_all_nodes_gathered_output_exit_0(testbed: Testbed) -> None:
    proc = skeleton("cluster", "exec", "echo same; hostname >&2", config=testbed.config_path)
    assert proc.returncode == 0, proc.stderr
    # identical stdout is gathered, but stderr (hostname) differs per node
    for host in testbed.ids:
        assert f"---------------- {host} ----------------" in proc.stdout
    proc = skeleton("cluster", "exec", "echo same", config=testbed.config_path)
    assert proc.returncode == 0
    assert "---------------- node-[01-06] ----------------\nsame\n" in proc.stdout


def test_command_reaches_remote_shell_exactly(settings: Settings) -> None:
    tricky = (
        "printf '%s|' \"a b\" 'c\"d' \"$(echo sub)\" `echo back` é☃ ; "
        "echo one | tr o 0; printf 'line1\\nline2\\n'; echo \"$((6*7))\"; "
        "x='semi;colon'; echo \"$x\"; echo 'multi\nline'"
    )
    with Cluster(settings) as cluster:
        result = cluster.run(tricky, cluster.select(["node-01"]))
    out = result["node-01"].stdout
    assert out == ('a b|c"d|sub|back|é☃|0ne\nline1\nline2\n42\nsemi;colon\nmulti\nline\n')


def test_100kb_argument(settings: Settings) -> None:
    payload = "x" * 100_000
    with Cluster(settings) as cluster:
        result = cluster.run(f"printf %s '{payload}' | wc -c", cluster.select(["node-02"]))
    assert result["node-02"].exit_code == 0, result["node-02"]
    assert result["node-02"].stdout.strip() == "100000"


def test_exit_codes_grouped_and_contract(testbed: Testbed) -> None:
    proc = skeleton("cluster", "exec", 'case "$(hostname)" in node-0[12]) exit 3;; esac; true',
                    config=testbed.config_path)
    assert proc.returncode == 1
    assert "node-[01-02]: exit 3" in proc.stdout
    assert "node-[03-06]: exit 0" in proc.stdout


def test_json_output(testbed: Testbed) -> None:
    proc = skeleton("cluster", "exec", "hostname; exit 2", "--node", "node-0[1-2]", "--json",
                    config=testbed.config_path)
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["nonzero"] == ["node-01", "node-02"]
    assert data["nodes"]["node-02"]["stdout"] == "node-02\n"
    assert data["nodes"]["node-02"]["exit_code"] == 2
    assert data["exit_code"] == 1


def test_stream_prefixes_lines(testbed: Testbed) -> None:
    proc = skeleton("cluster", "exec", "echo a; sleep 0.2; echo b >&2", "--stream",
                    "--role", "stt", config=testbed.config_path)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    for node in ("node-01", "node-03", "node-05"):
        assert f"{node}: a" in lines
        assert f"{node} [err]: b" in lines
    assert not any(line.startswith("node-02") for line in lines)  # role filter


def test_out_dir_full_output(testbed: Testbed, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = skeleton("cluster", "exec", "seq 1 300000; echo err >&2", "--node", "node-03",
                    "--out-dir", str(out), config=testbed.config_path)
    assert proc.returncode == 0
    full = (out / "node-03.out").read_text()
    assert full.splitlines()[-1] == "300000" and len(full.splitlines()) == 300000
    assert (out / "node-03.err").read_text() == "err\n"


def test_no_match_selection_exit_2_lists_known(testbed: Testbed) -> None:
    proc = skeleton("cluster", "exec", "true", "--node", "nope-*", config=testbed.config_path)
    assert proc.returncode == 2
    assert "matched no node" in proc.stderr and "node-[01-06]" in proc.stderr
    assert proc.stdout == ""


# ---------------------------------------------------------------- faults


def test_refused_node_reported_fast_others_intact(testbed: Testbed, settings: Settings) -> None:
    tb.stop_sshd(testbed, "node-04")
    try:
        with Cluster(settings) as cluster:
            result = cluster.run("hostname")
        r = result["node-04"]
        assert r.error_kind is NodeErrorKind.REFUSED
        assert r.duration < 1.0  # refused at once, not after the connect timeout
        assert set(result.ok) == set(testbed.ids) - {"node-04"}
        assert result["node-05"].stdout == "node-05\n"
        assert result.exit_code() == 4
    finally:
        tb.start_sshd(testbed, "node-04")


def test_blackholed_node_within_connect_timeout(testbed: Testbed, tmp_path: Path) -> None:
    path = config_variant(testbed, tmp_path / "c.yaml", ssh={"connect_timeout": 2})
    tb.blackhole(testbed, "node-05")
    try:
        proc = skeleton("cluster", "exec", "hostname", config=path)
        assert proc.returncode == 4
        assert "node-05: unreachable: " in proc.stdout
        assert "timed out after 2s" in proc.stdout
        assert "node-06\n" in proc.stdout
        with cluster_for(path) as cluster:
            r = cluster.run("true", cluster.select(["node-05"]))["node-05"]
        assert r.error_kind is NodeErrorKind.UNREACHABLE
        assert r.duration <= 2 + 1  # the connect timeout, plus at most a second
    finally:
        tb.clear_blackhole(testbed, "node-05")


def test_frozen_before_banner(testbed: Testbed, tmp_path: Path) -> None:
    path = config_variant(testbed, tmp_path / "c.yaml", ssh={"connect_timeout": 2})
    tb.freeze(testbed, "node-06")
    try:
        started = time.monotonic()
        with cluster_for(path) as cluster:
            result = cluster.run("true")
        r = result["node-06"]
        assert r.error_kind is NodeErrorKind.UNREACHABLE
        assert "no SSH banner" in (r.error or "")
        assert time.monotonic() - started < 2 + 5  # bounded by the connect timeout
        assert len(result.ok) == len(testbed.ids) - 1
    finally:
        tb.thaw(testbed, "node-06")


def test_frozen_mid_command_reported_lost(testbed: Testbed, tmp_path: Path) -> None:
    path = config_variant(testbed, tmp_path / "c.yaml", ssh={"keepalive": 1})
    with cluster_for(path) as cluster:
        nodes = cluster.select(["node-0[1-2]"])
        timer = threading.Timer(1.0, tb.freeze, args=(testbed, "node-02"))
        timer.start()
        try:
            result = cluster.run("sleep 4; echo done", nodes, timeout=60)
        finally:
            timer.join()
            tb.thaw(testbed, "node-02")
    assert result["node-02"].error_kind is NodeErrorKind.LOST
    assert result["node-02"].duration < 10  # not hung until the 60 s deadline
    assert result["node-01"].stdout == "done\n"


def test_pooled_connection_to_dead_node_fails_within_connect_timeout(
        testbed: Testbed, tmp_path: Path) -> None:
    path = config_variant(testbed, tmp_path / "c.yaml", ssh={"connect_timeout": 2})
    with cluster_for(path) as cluster:
        node = cluster.node("node-03")
        first = cluster.connector.run(node, "true")
        assert first.ok
        tb.link_down(testbed, "node-03")
        try:
            started = time.monotonic()
            second = cluster.connector.run(node, "true")
            took = time.monotonic() - started
        finally:
            tb.link_up(testbed, "node-03")
    assert second.error_kind in (NodeErrorKind.LOST, NodeErrorKind.UNREACHABLE)
    assert took < 2 + 3  # not Paramiko's one-hour channel-open default


def test_warm_connects_ahead_and_hands_its_failure_to_the_first_command(
        testbed: Testbed, tmp_path: Path) -> None:
    path = config_variant(testbed, tmp_path / "c.yaml", ssh={"connect_timeout": 2})
    tb.blackhole(testbed, "node-05")
    try:
        with cluster_for(path) as cluster:
            nodes = cluster.select(["node-0[4-5]"])
            started = time.monotonic()
            wait = cluster.connector.warm(nodes)
            healthy = cluster.connection(nodes[0])  # opened by the warm-up
            result = cluster.run("hostname", nodes)
            took = time.monotonic() - started
            wait()
            assert cluster.connection(nodes[0]) is healthy
        assert result["node-04"].stdout == "node-04\n"
        assert result["node-05"].error_kind is NodeErrorKind.UNREACHABLE
        assert took < 2 + 1.5  # one connect timeout: the command did not start a second one
    finally:
        tb.clear_blackhole(testbed, "node-05")


def test_a_warm_up_failure_is_not_handed_to_a_later_command(testbed: Testbed,
                                                            tmp_path: Path) -> None:
    path = config_variant(testbed, tmp_path / "c.yaml", ssh={"connect_timeout": 1})
    with cluster_for(path) as cluster:
        nodes = cluster.select(["node-05"])
        tb.blackhole(testbed, "node-05")
        try:
            cluster.connector.warm(nodes)
            time.sleep(2)  # the attempt has failed by now, and nobody was waiting for it
        finally:
            tb.clear_blackhole(testbed, "node-05")
        result = cluster.run("hostname", nodes)  # the node is back: connect again
    assert result["node-05"].stdout == "node-05\n", result.to_json()


def test_command_timeout_kills_process_group_on_node(testbed: Testbed) -> None:
    proc = skeleton("cluster", "exec", "sleep 1000 & sleep 999; wait", "--node", "node-01",
                    "--timeout", "1", config=testbed.config_path)
    assert proc.returncode == 4
    assert "node-01: timeout: command exceeded its 1s timeout; killed on the node" in proc.stdout
    time.sleep(0.3)
    left = tb.host_exec(testbed, "node-01", ["pgrep", "-x", "sleep"], check=False)
    assert left.stdout.strip() == "", "sleep processes survived the timeout"


def test_unknown_host_key_refused_then_accept_new(testbed: Testbed, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    strict = config_variant(testbed, tmp_path / "strict.yaml",
                            ssh={"known_hosts": str(empty)})
    proc = skeleton("cluster", "exec", "true", "--node", "node-01", config=strict)
    assert proc.returncode == 4
    assert "hostkey-unknown" in proc.stdout and "ssh-keyscan" in proc.stdout
    assert empty.read_text() == ""  # strict never writes
    accept = config_variant(testbed, tmp_path / "accept.yaml",
                            ssh={"known_hosts": str(empty), "host_key_policy": "accept-new"})
    proc = skeleton("cluster", "exec", "true", "--node", "node-01", config=accept)
    assert proc.returncode == 0, proc.stdout
    host = testbed.host("node-01")
    real_key = host.host_key_pub.read_text().split()[1]
    # recorded under the node id (pinned per id, as OpenSSH's HostKeyAlias)
    assert f"node-01 ssh-ed25519 {real_key}" in empty.read_text()
    # and the recorded key now satisfies strict checking
    proc = skeleton("cluster", "exec", "true", "--node", "node-01", config=strict)
    assert proc.returncode == 0


def test_changed_host_key_refused_in_both_modes(testbed: Testbed, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    lines = testbed.known_hosts.read_text().splitlines()
    ip2 = testbed.host("node-02").ip
    forged = [ln for ln in lines if not ln.startswith((ip2 + " ", "node-02 "))]
    wrong_key = (tmp_path / "wrong_key.pub").read_text().split()[1]
    forged += [f"{ip2} ssh-ed25519 {wrong_key}", f"node-02 ssh-ed25519 {wrong_key}"]
    kh = tmp_path / "known_hosts"
    kh.write_text("\n".join(forged) + "\n")
    for policy in ("strict", "accept-new"):
        path = config_variant(testbed, tmp_path / f"{policy}.yaml",
                              ssh={"known_hosts": str(kh), "host_key_policy": policy})
        proc = skeleton("cluster", "exec", "hostname", "--node", "node-0[1-3]", config=path)
        assert proc.returncode == 4
        assert "node-02: hostkey-changed: HOST KEY CHANGED" in proc.stdout
        assert "node-01\n" in proc.stdout and "node-03\n" in proc.stdout
    assert kh.read_text().count(ip2) == 1  # the forged entry was never replaced
    assert kh.read_text().count("node-02 ") == 1


def test_wrong_identity_file_is_auth_error(testbed: Testbed, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    path = config_variant(testbed, tmp_path / "c.yaml", ssh={"identity_file": str(other)})
    proc = skeleton("cluster", "exec", "true", "--node", "node-01", config=path)
    assert proc.returncode == 4
    assert "node-01: auth: authentication failed" in proc.stdout


def test_unresolvable_hostname(testbed: Testbed, tmp_path: Path) -> None:
    nodes = [*bed_nodes(testbed)[:1], {"id": "ghost", "host": "no-such-node.invalid"}]
    path = config_variant(testbed, tmp_path / "c.yaml", nodes=nodes)
    # Resolve without any network: only /etc/hosts and a resolver that cannot be reached
    # (loopback only), so no DNS query leaves this machine.
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up; exec "$@"', "sh",
         sys.executable, "-m", "skeleton_app", "cluster", "exec", "true", "--node", "ghost",
         "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4
    assert "ghost: unreachable: cannot resolve no-such-node.invalid" in proc.stdout


def test_option_injection_host_rejected_before_anything_runs(testbed: Testbed,
                                                             tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    nodes = [*bed_nodes(testbed), {"id": "evil", "host": f"-oProxyCommand=touch {marker}"}]
    path = config_variant(testbed, tmp_path / "c.yaml", nodes=nodes)
    proc = skeleton("cluster", "exec", "true", config=path)
    assert proc.returncode == 2
    assert "nodes[evil]: invalid host" in proc.stderr
    assert not marker.exists()


def test_many_handshakes_to_default_maxstartups_are_retried(testbed: Testbed,
                                                            tmp_path: Path) -> None:
    """40 nodes on one sshd with OpenSSH's default MaxStartups 10:30:100: every one succeeds."""
    host = testbed.host("node-06")
    original = host.sshd_config.read_text()
    host.sshd_config.write_text(
        "\n".join(ln for ln in original.splitlines() if not ln.startswith("MaxStartups"))
        + "\nMaxStartups 10:30:100\n")
    log_before = len(host.sshd_log.read_text())
    try:
        tb.stop_sshd(testbed, "node-06")
        tb.start_sshd(testbed, "node-06")
        # 40 host names (pooled apart) for the one address, through ~/.ssh/config.
        home = tmp_path / "home"
        (home / ".ssh").mkdir(parents=True)
        (home / ".ssh" / "config").write_text(f"Host alias-*\n  HostName {host.ip}\n")
        nodes = [{"id": f"alias-{i:02d}", "host": f"alias-{i:02d}"} for i in range(40)]
        path = config_variant(testbed, tmp_path / "c.yaml", nodes=nodes)
        code = ("import json\n"
                "from skeleton_app.cluster import Cluster\n"
                "from skeleton_app.config import load_config\n"
                f"c = Cluster.from_config(settings=load_config({str(path)!r}, env={{}}))\n"
                "r = c.run('echo ok')\n"
                "print(json.dumps([len(r.ok), len(c.connector._pool),"
                " {k: v.error for k, v in r.errors.items()}]))\n")
        proc = python_with_home(home, code)
        assert proc.returncode == 0, proc.stderr
        ok, connections, errors = json.loads(proc.stdout)
        assert (ok, connections) == (40, 40), errors
        # sshd did drop handshakes (it logs the first drop of a burst): they were retried.
        assert "past MaxStartups" in host.sshd_log.read_text()[log_before:]
    finally:
        host.sshd_config.write_text(original)
        tb.stop_sshd(testbed, "node-06")
        tb.start_sshd(testbed, "node-06")


def test_fanout_bound_never_exceeded(testbed: Testbed, tmp_path: Path) -> None:
    """33 nodes (aliases of the 6 hosts), fanout 4: at most 4 commands in flight, at once."""
    base = bed_nodes(testbed)
    nodes = [{"id": f"n{i:02d}", "host": base[i % len(base)]["host"]} for i in range(33)]
    path = config_variant(testbed, tmp_path / "c.yaml", nodes=nodes)
    cmd = ("echo \"start $(date +%s.%N)\" >> ~/fanout.log; sleep 0.2;"
           " echo \"end $(date +%s.%N)\" >> ~/fanout.log")
    for h in testbed.hosts:
        (h.home / "fanout.log").unlink(missing_ok=True)
    proc = skeleton("cluster", "exec", cmd, "--fanout", "4", config=path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = []
    for h in testbed.hosts:
        for line in (h.home / "fanout.log").read_text().splitlines():
            kind, stamp = line.split()
            events.append((float(stamp), 1 if kind == "start" else -1))
        (h.home / "fanout.log").unlink()
    assert len(events) == 66
    in_flight = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        in_flight += delta
        peak = max(peak, in_flight)
    assert 2 <= peak <= 4


def test_huge_output_memory_bounded_and_escapes_not_replayed(testbed: Testbed) -> None:
    """200 MB of random bytes (invalid UTF-8, ESC sequences) from one node."""
    cmd = ("printf '\\033]0;pwned\\007\\033[2J'; head -c 200000000 /dev/urandom;"
           " printf '\\033[31mtail\\n'")
    code = (
        "import resource, subprocess, sys\n"
        f"p = subprocess.run([sys.executable, '-m', 'skeleton_app', 'cluster', 'exec', {cmd!r},"
        f" '--node', 'node-0[1-2]', '--config', {str(testbed.config_path)!r}],"
        " capture_output=True)\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "sys.stdout.buffer.write(b'%d %d\\n' % (p.returncode, rss) + p.stdout)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    first, _, shown = proc.stdout.partition(b"\n")
    rc, rss_kb = (int(x) for x in first.split())
    assert rc == 0
    assert rss_kb < 200 * 1024, f"controller peaked at {rss_kb // 1024} MiB"
    assert b"\x1b" not in shown and b"\x07" not in shown
    assert b"\\x1b[31mtail" in shown
    assert b"bytes omitted" in shown


# ---------------------------------------------------------------- Python API


def test_connector_reuses_pooled_connection(settings: Settings) -> None:
    from skeleton_app.ssh.fabric import connection

    with Connector(settings.ssh) as connector:
        node = settings.node("node-01")
        assert node is not None
        first = connector.run(node, "echo $PPID")
        conn = connection(connector, node)
        second = connector.run(node, "echo $PPID")
        assert connection(connector, node) is conn
        assert first.ok and second.ok
        r = connector.run(node, "cat", RunOptions(stdin=b"from stdin\n"))
        assert r.stdout == "from stdin\n"


def test_group_is_fabric_threading_group_with_our_policy(settings: Settings) -> None:
    from fabric import ThreadingGroup

    from skeleton_app.ssh.fabric import SkeletonConnection

    with Cluster(settings) as cluster:
        group = cluster.group("node-[01-03]")
        assert isinstance(group, ThreadingGroup)
        assert all(isinstance(c, SkeletonConnection) for c in group)
        results = group.run("hostname", hide=True, in_stream=False)
        assert sorted(r.stdout.strip() for r in results.values()) == [
            "node-01", "node-02", "node-03"]
        group.close()


def test_ssh_executor_seed_api(settings: Settings, testbed: Testbed, tmp_path: Path) -> None:
    import asyncio

    from skeleton_app.errors import NodeError
    from skeleton_app.remote import SSHExecutor

    local = tmp_path / "in.txt"
    local.write_text("payload\n")

    async def main() -> None:
        async with SSHExecutor(testbed.config_path) as executor:
            exit_code, out, err = await executor.execute("node-01", "hostname", timeout=30.0)
            assert (exit_code, out, err) == (0, "node-01\n", "")
            ip = testbed.host("node-02").ip
            exit_code, out, _ = await executor.execute(ip, "hostname")  # by address
            assert out == "node-02\n"
            await executor.copy_file("node-03", local, "/home/skeleton/copied.txt",
                                     direction="to")
            assert (testbed.host("node-03").home / "copied.txt").read_text() == "payload\n"
            back = tmp_path / "back.txt"
            await executor.copy_file("node-03", back, "/home/skeleton/copied.txt",
                                     direction="from")
            assert back.read_text() == "payload\n"
            results = await executor.execute_on_all(["node-01", "node-02"], "uptime",
                                                    parallel=True)
            for host, (code, out, _err) in results.items():
                assert code == 0 and "load average" in out, host
            tb.stop_sshd(testbed, "node-04")
            try:
                mixed = await executor.execute_on_all(["node-04", "node-05"], "true")
                assert mixed["node-04"].exit_code == -1
                assert mixed["node-04"].error_kind is NodeErrorKind.REFUSED
                assert mixed["node-05"].exit_code == 0
                with pytest.raises(NodeError) as info:
                    await executor.execute("node-04", "true")
                assert info.value.kind is NodeErrorKind.REFUSED
            finally:
                tb.start_sshd(testbed, "node-04")

    asyncio.run(main())
    (testbed.host("node-03").home / "copied.txt").unlink()


def test_ssh_executor_no_args_reads_configuration(testbed: Testbed,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from skeleton_app.remote import SSHExecutor

    monkeypatch.setenv("SKELETON_CONFIG", str(testbed.config_path))

    async def main() -> str:
        async with SSHExecutor() as executor:
            _, out, _ = await executor.execute("node-06", "whoami")
            return out

    assert asyncio.run(main()) == "skeleton\n"


def test_yaml_of_testbed_is_strict(testbed: Testbed) -> None:
    data = yaml.safe_load(testbed.config_path.read_text())
    assert data["ssh"]["host_key_policy"] == "strict"
    assert all(not n["host"].startswith("192.168.32.") for n in data["nodes"])


def test_jump_host_carries_the_same_policy(testbed: Testbed, tmp_path: Path) -> None:
    jump = testbed.host("node-01")
    path = config_variant(testbed, tmp_path / "c.yaml",
                          ssh={"jump_host": f"skeleton@{jump.ip}"})
    with cluster_for(path) as cluster:
        result = cluster.run("echo $SSH_CONNECTION", cluster.select(["node-02"]))
    # node-02 sees the connection coming from the jump host, not from the controller
    assert result["node-02"].stdout.split()[0] == jump.ip
    # a jump host whose key is unknown is refused like any host
    kh = tmp_path / "known_hosts"
    kh.write_text("".join(ln + "\n" for ln in testbed.known_hosts.read_text().splitlines()
                          if not ln.startswith(jump.ip + " ")))
    path = config_variant(testbed, tmp_path / "d.yaml",
                          ssh={"jump_host": f"skeleton@{jump.ip}", "known_hosts": str(kh)})
    with cluster_for(path) as cluster:
        result = cluster.run("true", cluster.select(["node-02"]))
    assert result["node-02"].error_kind is NodeErrorKind.HOSTKEY_UNKNOWN
    assert jump.ip in (result["node-02"].error or "")


def test_command_killed_by_a_signal_reports_128_plus_signal(settings: Settings) -> None:
    with Cluster(settings) as cluster:
        result = cluster.run("echo before; kill -TERM $$", cluster.select(["node-01"]))
    r = result["node-01"]
    assert r.error_kind is None and r.exit_code == 128 + 15 and r.stdout == "before\n"
    assert result.exit_code() == 1  # it ran and failed: not a lost connection


def test_ssh_config_alias_and_proxyjump_are_honoured(testbed: Testbed, tmp_path: Path) -> None:
    """~/.ssh/config stays honoured (Fabric reads it): a Host alias with HostName and a
    ProxyJump; the jump connection gets our strict host-key policy too."""
    jump, target = testbed.host("node-01"), testbed.host("node-03")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host far-node\n  HostName {target.ip}\n  ProxyJump skeleton@{jump.ip}\n")
    path = config_variant(testbed, tmp_path / "c.yaml",
                          nodes=[{"id": "far", "host": "far-node"}])
    code = ("from skeleton_app.cluster import Cluster\n"
            "from skeleton_app.config import load_config\n"
            f"c = Cluster.from_config(settings=load_config({str(path)!r}, env={{}}))\n"
            "r = c.run('echo $SSH_CONNECTION; hostname')['far']\n"
            "print(r.error_kind, r.error, r.stdout.replace(chr(10), ' '))\n")
    proc = python_with_home(home, code)
    assert proc.returncode == 0, proc.stderr
    kind, _, rest = proc.stdout.partition(" ")
    assert kind == "None", proc.stdout
    assert rest.split()[-1] == "node-03" and jump.ip in rest  # came through the jump host
    # the same alias, with the jump host missing from known_hosts: refused, not auto-added
    kh = tmp_path / "known_hosts"
    kh.write_text("".join(ln + "\n" for ln in testbed.known_hosts.read_text().splitlines()
                          if not ln.startswith(jump.ip + " ")))
    config_variant(testbed, path, ssh={"known_hosts": str(kh)},
                   nodes=[{"id": "far", "host": "far-node"}])
    proc = python_with_home(home, code)
    assert proc.stdout.startswith("hostkey-unknown"), proc.stdout + proc.stderr
    assert jump.ip in proc.stdout
    assert jump.ip not in kh.read_text()


_RELAY = """import os, select, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
open(sys.argv[3], "w").close()
while True:
    ready = select.select([0, s], [], [])[0]
    if 0 in ready:
        data = os.read(0, 65536)
        if not data:
            break
        s.sendall(data)
    if s in ready:
        data = s.recv(65536)
        if not data:
            break
        os.write(1, data)
"""


def test_ssh_config_proxycommand_and_a_two_hop_proxyjump(testbed: Testbed,
                                                        tmp_path: Path) -> None:
    """The pool reaches nodes itself: a ProxyCommand (paramiko.ProxyCommand) and a ProxyJump
    of two hops, taken in OpenSSH's order (the first hop first), with our host-key policy on
    each hop; no Fabric import for either."""
    first, second, target = (testbed.host(n) for n in ("node-01", "node-02", "node-04"))
    relay, marker = tmp_path / "relay.py", tmp_path / "relay-ran"
    relay.write_text(_RELAY)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host proxied\n  HostName {target.ip}\n"
        f"  ProxyCommand {sys.executable} {relay} %h %p {marker}\n"
        f"Host two-hops\n  HostName {target.ip}\n"
        f"  ProxyJump skeleton@{first.ip},skeleton@{second.ip}\n")
    # A fresh id for the second route: ids are pinned to the machine first seen under them.
    path = config_variant(testbed, tmp_path / "c.yaml", nodes=[
        {"id": "node-04", "host": "proxied"}, {"id": "two-hop-04", "host": "two-hops"}])
    code = ("import json, sys\n"
            "from skeleton_app.cluster import Cluster\n"
            "from skeleton_app.config import load_config\n"
            f"c = Cluster.from_config(settings=load_config({str(path)!r}, env={{}}))\n"
            "r = c.run('echo $SSH_CONNECTION; hostname')\n"
            "print(json.dumps({n: [v.error, v.stdout.split()] for n, v in r.items()}),"
            " 'fabric' in sys.modules)\n")
    proc = python_with_home(home, code)
    assert proc.returncode == 0, proc.stderr
    results, _, fabric_loaded = proc.stdout.strip().rpartition(" ")
    got = json.loads(results)
    assert got["node-04"][0] is None and got["node-04"][1][-1] == "node-04", got
    assert marker.exists()  # it came through the proxy command
    assert got["two-hop-04"][0] is None and got["two-hop-04"][1][-1] == "node-04", got
    assert got["two-hop-04"][1][0] == second.ip  # the last hop is the one that connects to the node
    assert fabric_loaded == "False"


def test_commands_need_neither_fabric_nor_invoke_yet_ssh_config_is_honoured(
        testbed: Testbed, tmp_path: Path) -> None:
    """Commands run on pooled Paramiko transports: no Fabric or Invoke import (~50 ms of every
    CLI run). ~/.ssh/config still applies as Fabric applies it (HostName, IdentityFile, and
    Match exec, whose Invoke is imported when the block is evaluated), and the Fabric
    Connection handed out afterwards wraps the very same transport."""
    target = testbed.host("node-02")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f'Match host alias-node exec "test -n alias"\n  HostName {target.ip}\n'
        f"  IdentityFile {testbed.identity_file}\n")
    data = yaml.safe_load(testbed.config_path.read_text())
    data["ssh"].pop("identity_file", None)  # the key comes from ~/.ssh/config only
    data["nodes"] = [{"id": "aliased", "host": "alias-node"}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    code = ("import sys\n"
            "from skeleton_app.cluster import Cluster\n"
            "from skeleton_app.config import load_config\n"
            f"c = Cluster.from_config(settings=load_config({str(path)!r}, env={{}}))\n"
            "node = c.node('aliased')\n"
            "r = c.run('hostname', [node])['aliased']\n"
            "print(r.error_kind, r.stdout.strip(), 'fabric' in sys.modules,"
            " 'invoke' in sys.modules)\n"
            "transport = c.connector.link(node).transport\n"
            "conn = c.connection(node)\n"
            "print(type(conn).__name__, conn.transport is transport,"
            " conn.run('hostname', hide=True).stdout.strip())\n")
    proc = python_with_home(home, code)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first == "None node-02 False True"  # Invoke only for Match exec; no Fabric
    assert second == "SkeletonConnection True node-02"


def test_connections_built_concurrently_never_touch_the_shared_config(
        settings: Settings) -> None:
    """Regression: Fabric's undeclared `inline_ssh_env` turned each new Connection into a
    write to the Config shared by all of them, racing other threads (seen at 128 hosts)."""
    from concurrent.futures import ThreadPoolExecutor

    from skeleton_app.ssh.fabric import SkeletonConnection, config_for, new_connection

    connector = Connector(settings.ssh)
    node = settings.nodes[0]
    writes: list[tuple[object, ...]] = []
    config = config_for(connector)
    original = config._modify
    object.__setattr__(config, "_modify", lambda *a, **k: (writes.append(a), original(*a, **k)))
    with ThreadPoolExecutor(max_workers=32) as pool:
        conns = list(pool.map(lambda _: new_connection(connector, node), range(500)))
    assert all(isinstance(c, SkeletonConnection) and c.gateway is None for c in conns)
    assert writes == [], f"building a connection wrote to the shared config: {writes[:3]}"
