"""`skeleton jack link|unlink|mesh` on real test hosts: each runs its own `jackd -d dummy`
(started here, detached, with the command line `JackDriver.argv` gives), and a link is a real
JackTrip hub/client pair over UDP between two hosts' network namespaces.

The end-to-end test plays a tone (jack_simple_client) into the hub's send port on node-01 and
records (jack_rec) the client's receive port on node-02, then checks with sox that the
recording is not silence -- and that the same recording without the tone IS silence, so the
check means something. Killing the client end by its recorded pid shows the link down in
`mesh`; `link` again restores it.

JACK keeps its sockets and shared memory in /dev/shm, which the test hosts share with the
machine: each host gets a private tmpfs there (in its own mount namespace) unless the testbed
already gives it one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skeleton_app.cluster import Cluster
from skeleton_app.config import load_config
from skeleton_app.jack_settings import JackDriver
from skeleton_app.testing import testbed as tbm
from skeleton_app.testing.testbed import Testbed
from tests.support.frontends import inv
from tests.support.helpers import config_variant, skeleton

pytestmark = pytest.mark.slow

SERVER = "skeleton-test"
HOSTS = ("node-01", "node-02")
_DRIVER = JackDriver("dummy", ("-r", "48000", "-p", "256"))


def _node_sh(cluster: Cluster, node: str, command: str, timeout: float = 30) -> str:
    from skeleton_app.ssh.runner import RunOptions

    r = cluster.connector.run(cluster.node(node), command, RunOptions(timeout=timeout))
    assert r.ok, (node, command, r.summary(), r.stdout, r.stderr)
    return r.stdout


def _detached(command: str, name: str) -> str:
    """`exec command` on a node, detached from the SSH session (its own session, stdio to
    app/logs/NAME.log), its pid in app/logs/NAME.pid: the teardown kills exactly it."""
    inner = f"echo $$ >app/logs/{name}.pid; exec {command}"
    return (f"mkdir -p app/logs && setsid -f sh -c {shlex.quote(inner)} </dev/null"
            f" >>app/logs/{name}.log 2>&1")


def _kill(cluster: Cluster, host: str, *names: str) -> None:
    """Stop what `_detached` started under these names (by its recorded pid)."""
    for name in names:
        _node_sh(cluster, host, f"[ ! -f app/logs/{name}.pid ] ||"
                 f" {{ kill $(cat app/logs/{name}.pid) 2>/dev/null; rm -f app/logs/{name}.pid; }}")


def _private_shm(testbed: Testbed, host: str) -> bool:
    """A tmpfs over the host's /dev/shm unless it has its own already; True when made here."""
    inside = tbm.host_exec(testbed, host, ["stat", "-Lc", "%d", "/dev/shm"]).stdout.strip()
    if inside != str(os.stat("/dev/shm").st_dev):
        return False
    tbm.host_exec(testbed, host, ["mount", "-t", "tmpfs", "-o", "mode=1777,size=256m",
                                  "skeleton-jack-shm", "/dev/shm"])
    return True


@pytest.fixture(scope="module")
def jack_config(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session testbed's config with a `jack:` section, and jackd running on HOSTS (and
    stopped again, with every jacktrip this module left, at the end)."""
    path = config_variant(testbed, tmp_path_factory.mktemp("jack") / "config.yaml",
                          jack={"server_name": SERVER, "driver": "dummy",
                                "driver_options": ["-r", "48000", "-p", "256"],
                                "udp_base_port": 4464})
    mounted = [h for h in HOSTS if _private_shm(testbed, h)]
    settings = load_config(path, env={})
    argv = shlex.join(_DRIVER.argv("jackd", SERVER))
    with Cluster(settings) as cluster:
        for host in HOSTS:
            _node_sh(cluster, host, _detached(argv, "jackd-test"))
        for host in HOSTS:
            _wait(lambda h=host: _lsp(cluster, h) is not None, 20, f"jackd on {host}")
    try:
        yield path
    finally:
        skeleton("jack", "unlink", "node-01", "node-02", config=path)  # a failed test's ends
        with Cluster(settings) as cluster:
            for host in HOSTS:
                _kill(cluster, host, "tone", "holder", "stray", "jackd-test")
        time.sleep(0.5)  # jackd leaves its sockets before the tmpfs goes
        for host in mounted:
            tbm.host_exec(testbed, host, ["umount", "-l", "/dev/shm"], check=False)


@pytest.fixture(autouse=True)
def _own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's link records in a state dir of its own (the CLI inherits it)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_STATE_HOME", str(state))


def _wait(check: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {seconds} s")


def _lsp(cluster: Cluster, host: str) -> list[str] | None:
    from skeleton_app.ssh.runner import RunOptions

    r = cluster.connector.run(cluster.node(host), f"JACK_DEFAULT_SERVER={SERVER} jack_lsp",
                              RunOptions(timeout=20))
    return r.stdout.split("\n") if r.ok else None


def _jack(config: Path, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    proc = skeleton("jack", *args, config=config, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def _mesh(config: Path) -> list[dict[str, object]]:
    code, out, err = _jack(config, "mesh", "--json")
    assert code in (0, 1), err
    links: list[dict[str, object]] = json.loads(out)["links"]
    return links


def _amplitude(cluster: Cluster, seconds: int = 2) -> float:
    """Record node-02's end of the link for `seconds`; sox's maximum amplitude of it."""
    wav = "app/logs/jack-rec.wav"
    _node_sh(cluster, "node-02", f"rm -f {wav} && JACK_DEFAULT_SERVER={SERVER} timeout 20"
             f" jack_rec -f {wav} -d {seconds} -b 16 jt-node-01:receive_1 >/dev/null 2>&1",
             timeout=40)
    stat = _node_sh(cluster, "node-02", f"sox {wav} -n stat 2>&1")
    match = re.search(r"Maximum amplitude:\s+([0-9.]+)", stat)
    assert match, stat
    return float(match.group(1))


def test_a_tone_crosses_the_link_and_a_dropped_client_shows_down(jack_config: Path) -> None:
    code, out, err = _jack(jack_config, "link", "node-01", "node-02")
    assert code == 0, out + err
    assert "node-01: hub port 4464 -> node-02: up" in out, out
    assert "node-02: client <- node-01: up" in out, out
    [state] = _mesh(jack_config)
    assert (state["hub"], state["client"], state["state"]) == ("node-01", "node-02", "up")
    assert (state["channels"], state["queue"], state["buffer_strategy"]) == (2, 4, 1)
    # Linking again is a no-op while the link is up; `inv` shows the same mesh.
    code, out, err = _jack(jack_config, "link", "node-01", "node-02")
    assert code == 0 and "already up" in out, out + err
    proc = inv("jack-mesh", "--json", config=jack_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [s["state"] for s in json.loads(proc.stdout)["links"]] == ["up"]

    settings = load_config(jack_config, env={})
    with Cluster(settings) as cluster:
        silent = _amplitude(cluster)  # the control case: nothing plays into the link
        _node_sh(cluster, "node-01", _detached(
            f"env JACK_DEFAULT_SERVER={SERVER} jack_simple_client tone", "tone"))
        _wait(lambda: "tone:output1" in (_lsp(cluster, "node-01") or []), 20, "the tone")
        _node_sh(cluster, "node-01", f"JACK_DEFAULT_SERVER={SERVER} jack_connect"
                 " tone:output1 jt-node-02:send_1")
        loud = _amplitude(cluster)
        _kill(cluster, "node-01", "tone")
        assert silent < 0.001, f"the link carries sound with no tone played: {silent}"
        assert loud > 0.05, f"the tone did not cross the link: max amplitude {loud}"

        # Kill the client end by its recorded pid: mesh shows the link down.
        pid = _node_sh(cluster, "node-02",
                       "cut -d' ' -f1 app/.skeleton-jack/links/client@node-01.pid").strip()
        _node_sh(cluster, "node-02", f"kill -KILL {int(pid)}")
    [state] = _mesh(jack_config)
    assert state["state"] == "down", state
    assert "client end not running on node-02" in str(state["detail"]), state
    code, out, _ = _jack(jack_config, "mesh")
    assert code == 1 and "down" in out, out
    # `jack status` flags the dropped link on both of its nodes (and not on node-03).
    code, out, err = _jack(jack_config, "status")
    assert "node-02: link node-01 <-> node-02 down: client end not running" in out, out + err
    assert "node-01: link node-01 <-> node-02 down" in out and "node-03: link" not in out, out
    code, out, err = _jack(jack_config, "status", "-n", "node-01", "--json")
    assert [d["state"] for d in json.loads(out)["dropped_links"]["node-01"]] == ["down"], out

    # `link` again restores it; with other settings, it replaces both ends (none is left).
    code, out, err = _jack(jack_config, "link", "node-01", "node-02")
    assert code == 0, out + err
    [state] = _mesh(jack_config)
    assert state["state"] == "up", state
    code, out, err = _jack(jack_config, "status")
    assert " <-> " not in out, out  # restored: nothing flagged
    code, out, err = _jack(jack_config, "link", "node-01", "node-02", "--channels", "1",
                           "--port-offset", "3")
    assert code == 0, out + err
    [state] = _mesh(jack_config)  # no `unexpected` row: the old ends (port 4464) are gone
    assert (state["state"], state["channels"], state["port"]) == ("up", 1, 4467), state

    code, out, err = _jack(jack_config, "unlink", "node-02", "node-01")  # either order
    assert code == 0, out + err
    assert "client end stopped" in out and "hub end stopped" in out, out
    assert _mesh(jack_config) == []
    code, out, err = _jack(jack_config, "unlink", "node-01", "node-02")  # idempotent
    assert code == 0 and out.count("not running") == 2, out + err


def test_a_port_in_use_is_one_line_and_leaves_nothing_started(jack_config: Path) -> None:
    settings = load_config(jack_config, env={})
    with Cluster(settings) as cluster:
        # Something else holds UDP 4474 on node-02 (the client's port of offset 10).
        _node_sh(cluster, "node-02", _detached(
            "python3 -c 'import socket, time;"
            " s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
            " s.bind((\"0.0.0.0\", 4474)); time.sleep(60)'", "holder"))
        _wait(lambda: ":117A " in _node_sh(cluster, "node-02", "cat /proc/net/udp"), 10,
              "the UDP holder")  # 4474 = 0x117A
        code, out, err = _jack(jack_config, "link", "node-01", "node-02", "--port-offset", "10")
        assert code == 1, out + err
        assert "node-02: client <- node-01: UDP port 4474 is already in use on node-02" in out
        assert "node-01: hub port 4474 -> node-02: stopped again" in out, out
        procs = _node_sh(cluster, "node-01", "pgrep -x jacktrip || true")
        assert procs.strip() == "", "the hub was left running"
        _kill(cluster, "node-02", "holder")
    assert _mesh(jack_config) == []  # nothing recorded


def test_a_jacktrip_no_record_names_is_unexpected(jack_config: Path) -> None:
    settings = load_config(jack_config, env={})
    with Cluster(settings) as cluster:
        _node_sh(cluster, "node-01", _detached(
            f"env JACK_DEFAULT_SERVER={SERVER} jacktrip -S -B 4999 -U 4999 -p 5", "stray"))
        _wait(lambda: "jacktrip" in _node_sh(cluster, "node-01", "pgrep -ax jacktrip || true"),
              10, "the stray jacktrip")
        try:
            [state] = _mesh(jack_config)
            assert (state["hub"], state["state"]) == ("node-01", "unexpected"), state
            assert "jacktrip -S -B 4999" in str(state["detail"]), state
        finally:
            _kill(cluster, "node-01", "stray")


def test_bad_input(jack_config: Path, testbed: Testbed, tmp_path: Path) -> None:
    code, out, err = _jack(jack_config, "link", "node-01", "nosuch-node")
    assert code == 2 and "unknown node 'nosuch-node'" in err, out + err
    code, out, err = _jack(jack_config, "link", "node-01", "node-01")
    assert code == 2 and "both ends are node-01" in err, out + err
    # jacktrip missing on the nodes: one line naming the Debian package, nothing started.
    missing = config_variant(testbed, tmp_path / "missing.yaml", jack={
        "server_name": SERVER, "jacktrip": "jacktrip-not-installed"})
    code, out, err = _jack(missing, "link", "node-01", "node-02")
    assert code == 1, out + err
    assert ("node-01: hub port 4464 -> node-02: jacktrip-not-installed is not installed on"
            " node-01 (Debian package jacktrip)") in out, out
    # No JACK server on node-03: `link` says so (it does not start one).
    code, out, err = _jack(jack_config, "link", "node-01", "node-03")
    assert code == 1, out + err
    assert f"no JACK server '{SERVER}' runs on node-03: start it first" in out, out
