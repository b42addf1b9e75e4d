"""`fab -H` as Fabric users type it (issue #15): `host:port` is honoured, `node-[01-02]`
expands to both nodes, an unknown id is an error naming the known nodes (no DNS lookup, no
connection), and an IP address that is no node still works (test_frontends)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from skeleton_app.testing.testbed import Testbed
from tests.support.frontends import fab, out

# Forwards IP:2222 to IP:22 inside a host's network namespace: sshd on another port.
_FORWARDER = r"""
import socket, sys, threading
ip = sys.argv[1]
server = socket.create_server((ip, 2222))
def pipe(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
print("ready", flush=True)
while True:
    client, _ = server.accept()
    print("accepted", flush=True)
    upstream = socket.create_connection((ip, 22))
    threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
"""


@pytest.fixture
def port_2222(testbed: Testbed) -> Iterator[subprocess.Popen[str]]:
    """node-01 answers SSH on port 2222 too (through a forwarder in its namespace)."""
    host = testbed.host("node-01")
    forwarder = subprocess.Popen(
        ["ip", "netns", "exec", host.namespace, "python3", "-c", _FORWARDER, host.ip],
        stdout=subprocess.PIPE, text=True)
    try:
        assert forwarder.stdout is not None and forwarder.stdout.readline() == "ready\n"
        yield forwarder
    finally:
        forwarder.kill()
        forwarder.wait()
        if forwarder.stdout is not None:
            forwarder.stdout.close()


def test_fab_host_port_is_honoured(testbed: Testbed,
                                   port_2222: subprocess.Popen[str]) -> None:
    cfg = testbed.config_path
    ran = fab("-H", "node-01:2222", "run", "--command", "hostname", config=cfg)
    assert ran.returncode == 0, out(ran)
    assert ran.stdout.splitlines()[-1] == "node-01"
    assert port_2222.stdout is not None and port_2222.stdout.readline() == "accepted\n"
    # nothing listens on node-02:2222: refused there, not silently sent to port 22
    refused = fab("-H", "node-02:2222", "uptime", config=cfg)
    assert refused.returncode == 4, out(refused)
    assert f"{testbed.host('node-02').ip}:2222" in refused.stdout + refused.stderr


def test_fab_host_range_expands(testbed: Testbed) -> None:
    both = fab("-H", "node-[01-02]", "uptime", config=testbed.config_path)
    assert both.returncode == 0, out(both)
    assert "---------------- node-[01-02] ----------------" in both.stdout  # one run of both
    assert "load average" in both.stdout
    some = fab("-H", "node-[03-04],node-06", "run", "--command", "hostname",
               config=testbed.config_path)
    assert some.returncode == 0, out(some)
    for node in ("node-03", "node-04", "node-06"):
        assert f"---------------- {node} ----------------\n{node}\n" in some.stdout, out(some)


@pytest.mark.parametrize(("hosts", "message"), [
    ("node-99", "unknown node node-99"),
    ("node-[05-07]", "unknown node node-07"),
    ("not-a-node.example", "unknown node not-a-node.example"),
    ("node-[01,02]", "fab splits -H at every comma"),
    ("node-01:http", "invalid port 'http'"),
    # fab runs a task host by host: a typo later in the list stops it before the first
    ("node-01,node-99", "unknown node node-99"),
    ("node-[01-02],skeleton@node-98:22", "unknown node node-98"),
])
def test_fab_unknown_hosts_are_errors(testbed: Testbed, hosts: str, message: str) -> None:
    refused = fab("-H", hosts, "run", "--command", "touch ~/fab-ran", config=testbed.config_path)
    assert refused.returncode == 2, out(refused)
    assert message in refused.stderr, out(refused)
    if "unknown node" in message:
        assert "known nodes: node-[01-06]" in refused.stderr, out(refused)
    assert not any((h.home / "fab-ran").exists() for h in testbed.hosts)
