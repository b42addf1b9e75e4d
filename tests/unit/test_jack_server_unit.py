"""The JACK server operation's parsing and rules without a node: `jack_lsp -c -p` output
(captured from jackd 1.9.21 -d dummy with jack_simple_client running and two connections
made), jack.sh replies, near matches for a typo'd port, and connect's checks on a scripted
node (FakeRunner)."""

from __future__ import annotations

import pytest

from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.errors import UsageError
from skeleton_app.nodes import Node
from skeleton_app.ops.jack import ports as jp
from skeleton_app.ops.jack.server import (
    check_port_name,
    connect_ports,
    parse_reply,
    server_control,
)
from skeleton_app.testing.fake import Call, FakeRunner, Reply

# `jack_lsp -c -p` on a real jackd -d dummy (captured verbatim: tabs and three-space indents).
LSP = (
    "system:capture_1\n"
    "   system:playback_2\n"
    "\tproperties: output,physical,terminal,\n"
    "system:capture_2\n"
    "   system:playback_1\n"
    "\tproperties: output,physical,terminal,\n"
    "system:playback_1\n"
    "   jack_simple_client:output1\n"
    "   system:capture_2\n"
    "\tproperties: input,physical,terminal,\n"
    "system:playback_2\n"
    "   jack_simple_client:output2\n"
    "   system:capture_1\n"
    "\tproperties: input,physical,terminal,\n"
    "jack_simple_client:output1\n"
    "   system:playback_1\n"
    "\tproperties: output,\n"
    "jack_simple_client:output2\n"
    "   system:playback_2\n"
    "\tproperties: output,\n"
)

STATUS_REPLY = ("state=running\npid=812\nrate=48000\nperiod=256\nxruns=2\n--- begin ports\n"
                + LSP + "--- end ports\n")


def test_parse_lsp_reads_names_directions_and_connections() -> None:
    ports = jp.parse_lsp(LSP)
    assert [p.name for p in ports] == [
        "system:capture_1", "system:capture_2", "system:playback_1", "system:playback_2",
        "jack_simple_client:output1", "jack_simple_client:output2"]
    playback_1 = jp.find(ports, "system:playback_1")
    assert playback_1 is not None
    assert playback_1.direction == "input" and playback_1.physical
    assert playback_1.connections == ("jack_simple_client:output1", "system:capture_2")
    client = jp.find(ports, "jack_simple_client:output1")
    assert client is not None and client.direction == "output" and not client.physical
    assert client.client == "jack_simple_client"
    assert jp.connected(ports, "system:capture_1", "system:playback_2")
    assert not jp.connected(ports, "system:capture_1", "system:playback_1")


def test_parse_lsp_skips_stray_lines_and_never_raises() -> None:
    assert jp.parse_lsp("") == ()
    assert jp.parse_lsp("   orphan:connection\n\tproperties: output,\nnot a port\n") == ()
    ports = jp.parse_lsp("a:b\n\x1b[31mevil:port\n")
    assert [p.name for p in ports] == ["a:b", "\x1b[31mevil:port"]


def test_near_matches_for_a_typo() -> None:
    ports = jp.parse_lsp(LSP)
    assert jp.near_matches(ports, "system:captur_1")[0] == "system:capture_1"
    assert "system:playback_1" in jp.near_matches(ports, "system:playbak_1")
    # Nothing close: the ports of the same client.
    assert jp.near_matches(ports, "system:q") == [
        "system:capture_1", "system:capture_2", "system:playback_1"]
    assert jp.near_matches(ports, "qqq:zzz") == []


def test_parse_reply_status() -> None:
    o = parse_reply("status", "default", STATUS_REPLY)
    assert (o.state, o.pid, o.sample_rate, o.period, o.xruns) == ("running", 812, 48000, 256, 2)
    assert o.up and len(o.ports) == 6
    assert o.summary == "running (pid 812), 48000 Hz, 256 frames, 2 xruns, 6 ports"
    assert o.as_dict()["ports"][0] == {"name": "system:capture_1", "direction": "output",
                                       "connections": ["system:playback_2"],
                                       "physical": True}


def test_parse_reply_failures() -> None:
    died = parse_reply("start", "default", "state=died\npid=9\nmessage=jackd exited at start\n"
                       "--- begin log_tail\nUnknown driver \"nope\"\n--- end log_tail\n")
    assert died.state == "died" and not died.up
    assert died.log_tail == ('Unknown driver "nope"',)
    missing = parse_reply("status", "default", "state=missing\nmessage=jackd is not installed"
                          " on the node (Debian package jackd2)\n")
    assert "jackd2" in missing.summary
    assert parse_reply("stop", "default", "garbage").state == "error"


def test_port_names_are_checked_before_anything_runs() -> None:
    assert check_port_name("system:capture_1") == "system:capture_1"
    for bad in ("", "nocolon", "a:b\nc:d", "x:" + "y" * 400, "-s:evil"):
        with pytest.raises(UsageError):
            check_port_name(bad)


NODE = Node(id="linux-01", host="127.0.0.1", port=1)


CONNECTED = Reply(0, "state=connected\n")


def _cluster(calls: list[Call], status: Reply, action: Reply = CONNECTED) -> Cluster:
    def handler(call: Call) -> Reply:
        calls.append(call)
        return status if "status" in call.command.split()[3:4] else action

    return Cluster(Settings(), [NODE], connector=FakeRunner(handler))


@pytest.mark.parametrize(("source", "dest", "disconnect", "state", "code", "runs"), [
    ("system:capture_1", "system:playback_1", False, "connected", 0, 2),
    ("system:capture_1", "system:playback_2", False, "already-connected", 0, 1),
    ("system:capture_1", "system:playback_1", True, "not-connected", 0, 1),
    ("system:captur_1", "system:playback_1", False, "no-port", 1, 1),
])
def test_connect_checks_the_ports_first(source: str, dest: str, disconnect: bool, state: str,
                                        code: int, runs: int) -> None:
    calls: list[Call] = []
    with _cluster(calls, Reply(0, STATUS_REPLY)) as cluster:
        result = connect_ports(cluster, NODE, source, dest, disconnect=disconnect)
    r = result["linux-01"]
    assert r.outcome is not None and r.outcome.state == state, r
    assert r.exit_code == code and len(calls) == runs
    if state == "no-port":
        assert r.outcome.near[0] == "system:capture_1"
        assert "near matches: system:capture_1" in r.outcome.summary
        assert result.exit_code() == 1
    if runs == 2:  # the port names reach the node as quoted arguments
        assert calls[1].command.endswith("-- system:capture_1 system:playback_1")


def test_connect_on_a_stopped_server_says_how_to_start_it() -> None:
    calls: list[Call] = []
    with _cluster(calls, Reply(3, "state=stopped\n")) as cluster:
        r = connect_ports(cluster, NODE, "a:b", "c:d")["linux-01"]
    assert r.outcome is not None and r.outcome.state == "not-running"
    assert "skeleton jack start -n linux-01" in r.outcome.summary and r.exit_code == 1


def test_status_of_a_stopped_server_fails_the_command() -> None:
    calls: list[Call] = []
    with _cluster(calls, Reply(3, "state=stopped\n")) as cluster:
        result = server_control(cluster, [NODE], "status")
    assert result["linux-01"].outcome is not None
    assert result["linux-01"].outcome.summary == "stopped"
    assert result.exit_code() == 1
    with pytest.raises(UsageError):
        server_control(Cluster(Settings(), [NODE]), [NODE], "restart")


def test_a_failed_start_shows_the_log_tail_under_the_table() -> None:
    """Each cell of the table stays one line; jackd's last log lines follow the table,
    per node, with control characters made visible."""
    import io

    from skeleton_app.app.views.jack_server import server_text
    from skeleton_app.results import ClusterResult, NodeResult

    died = parse_reply("start", "default", "state=died\npid=9\nmessage=jackd exited at start\n"
                       "--- begin log_tail\nUnknown driver \"nope\"\n\x1b[31mred\n"
                       "--- end log_tail\n")
    node = Node(id="node-01", host="10.0.0.1")
    result = ClusterResult([NodeResult(node="node-01", exit_code=1, outcome=died)])
    out = io.StringIO()
    server_text(result, [node], out)
    text = out.getvalue()
    table, _, after = text.partition("\nnode-01: the last lines of jackd's log:\n")
    assert "jackd exited at start" in table and "Unknown driver" not in table
    assert after == '  | Unknown driver "nope"\n  | \\x1b[31mred\n'
