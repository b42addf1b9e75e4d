"""The JackTrip link logic without nodes: parsing jacktrip.sh's replies (a probe captured
from real test hosts with a link up), the ends' command lines and names, the link records
and their 0600 state file, and mesh's should-vs-is over a scripted probe."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.errors import UsageError
from skeleton_app.jack_link_records import LinkRecord, record_from_mapping
from skeleton_app.jack_settings import JackSettings
from skeleton_app.nodes import Node
from skeleton_app.ops.jack import link_ends as ends
from skeleton_app.ops.jack.link_file import FileLinkStore
from skeleton_app.ops.jack.links import _jacktrip_error, _unexpected, _why_down, down_links
from skeleton_app.testing.fake import Call, FakeRunner, Handler, Reply

# `sh -s -- probe ...` on node-01 with the link node-01 -> node-02 up (as real jacktrip 1.7.0
# and jackd2 1.9.21 -d dummy answered on the test hosts; pid 977 and its name added).
PROBE_HUB = """\
jacktrip=ok
jack=up
end=hub@node-02 state=running pid=412 token=4464 connected=1
end=client@node-09 state=dead
proc=412 jacktrip -S -B 4464 -U 4464 -n 2 -q 4 --bufstrategy 1 -p 5
proc=977 jacktrip -C 10.0.0.9 -K jt-\x1b[31mevil
--- begin ports
system:capture_1
system:capture_2
system:playback_1
system:playback_2
jt-node-02:send_1
jt-node-02:send_2
jt-node-02:receive_1
jt-node-02:receive_2
--- end ports
"""
PROBE_CLIENT = """\
jacktrip=ok
jack=up
end=client@node-01 state=running pid=388 token=jt-node-01 connected=1
proc=388 jacktrip -C 10.213.0.11 -P 4464 -B 4464 -n 2 -q 4 --bufstrategy 1 -J jt-node-01 \
-K jt-node-02 -D
--- begin ports
system:capture_1
jt-node-01:send_1
jt-node-01:send_2
jt-node-01:receive_1
jt-node-01:receive_2
--- end ports
"""
# jacktrip 1.7.0's own words when its ports are taken (captured here).
TCP_BUSY_TAIL = ("mThreadPool default maxThreadCount = 2",
                 "JackTrip HUB SERVER: UDP Base Port set to 5020",
                 "TCP Socket Server on Port 5010 ERROR: The bound address is already in use")
UDP_BUSY_TAIL = ("ERROR:", "Could not bind UDP socket. It may already be binded by another"
                 " process on your machine. Try using a different port number",
                 "Exiting JackTrip...")

WHEN = datetime(2026, 12, 6, 21, 0, tzinfo=UTC)
A = Node(id="node-01", host="10.213.0.11")
B = Node(id="node-02", host="10.213.0.12")


def _record(hub: str = "node-01", client: str = "node-02", offset: int = 0) -> LinkRecord:
    return LinkRecord(hub, client, 2, offset, 4, 1, WHEN, "op@ctl")


def test_parse_probe() -> None:
    got = ends.parse_probe(PROBE_HUB)
    assert got.jacktrip and got.jack == "up"
    assert got.end("hub@node-02") == ends.RunningEnd("hub@node-02", True, 412, "4464", True)
    assert got.end("client@node-09") == ends.RunningEnd("client@node-09", False)
    assert [p.pid for p in got.processes] == [412, 977]
    assert "jt-node-02:send_2" in got.ports and len(got.ports) == 8
    empty = ends.parse_probe("garbage\n--- begin ports\n")
    assert (empty.jacktrip, empty.jack, empty.ends, empty.ports) == (False, "unknown", (),
                                                                      frozenset())


def test_parse_end_reply() -> None:
    r = ends.parse_end_reply("state=died pid=77\n--- begin log_tail\nA\nB\n--- end log_tail\n")
    assert (r.state, r.pid, r.log_tail) == ("died", 77, ("A", "B"))
    r = ends.parse_end_reply("state=port-in-use\nmessage=UDP port 4474 is already in use\n")
    assert (r.state, r.message) == ("port-in-use", "UDP port 4474 is already in use")
    assert ends.parse_end_reply("").state == "error"


def test_jacktrip_error_names_the_port_in_use() -> None:
    assert "a port is already in use" in _jacktrip_error(TCP_BUSY_TAIL)
    assert "Could not bind UDP socket" in _jacktrip_error(UDP_BUSY_TAIL)
    assert _jacktrip_error(()) == "no output"


def test_command_lines_and_names() -> None:
    settings = Settings(jack=JackSettings(udp_base_port=5000))
    record = _record(offset=3)
    hub = ends.hub_plan(settings, record, A)
    client = ends.client_plan(settings, record, B, A)
    assert hub.argv == ("jacktrip", "-S", "-B", "5003", "-U", "5003", "-n", "2", "-q", "4",
                        "--bufstrategy", "1", "-p", "5")
    assert (hub.end, hub.token, hub.checks) == ("hub@node-02", "5003",
                                                 ("tcp:5003", "udp:5003"))
    assert client.argv == ("jacktrip", "-C", "10.213.0.11", "-P", "5003", "-B", "5003",
                           "-n", "2", "-q", "4", "--bufstrategy", "1", "-J", "jt-node-01",
                           "-K", "jt-node-02", "-D")
    assert hub.ports(1) == ("jt-node-02:send_1", "jt-node-02:receive_1")
    long = "n" * 63
    assert len(ends.jack_name(long)) == 63 and ends.jack_name(long) != ends.jack_name(
        long[:-1] + "m")
    with pytest.raises(ValueError):
        ends.end_name("hub", "../etc")


def test_up_down_and_unexpected() -> None:
    settings = Settings()
    record = _record()
    hub, client = ends.hub_plan(settings, record, A), ends.client_plan(settings, record, B, A)
    seen = {"node-01": ends.parse_probe(PROBE_HUB), "node-02": ends.parse_probe(PROBE_CLIENT)}
    assert _why_down(record, hub, client, seen) == ""
    dropped = dict(seen, **{"node-02": ends.parse_probe(PROBE_CLIENT.replace(
        "state=running pid=388 token=jt-node-01 connected=1", "state=dead"))})
    assert _why_down(record, hub, client, dropped) == "client end not running on node-02"
    no_port = dict(seen, **{"node-01": ends.parse_probe(PROBE_HUB.replace(
        "jt-node-02:receive_2\n", ""))})
    assert _why_down(record, hub, client, no_port) == \
        "node-01 has no JACK port jt-node-02:receive_2"
    # pid 977 runs jacktrip on node-01 but no record names it.
    odd = _unexpected([record], seen, {"node-01": A, "node-02": B})
    assert [(s.hub, s.state, s.pids) for s in odd] == [("node-01", "unexpected", (977,))]
    # Without the record, the link's own ends are unexpected too.
    assert {s.pids for s in _unexpected([], seen, {})} == {(412,), (977,), (388,)}


def test_down_links_per_node() -> None:
    from skeleton_app.ops.jack.links import LinkState, Mesh
    from skeleton_app.results import ClusterResult

    up = LinkState("node-01", "node-02", "up", record=_record())
    down = LinkState("node-03", "node-01", "down", "x", record=_record("node-03", "node-01"))
    stray = LinkState("node-04", "?", "unexpected")
    got = down_links(Mesh((up, down, stray), ClusterResult([])))
    assert got == {"node-03": (down,), "node-01": (down,)}


def test_record_checks() -> None:
    good = _record().as_dict()
    assert record_from_mapping(good) == _record()
    for key, value, message in (("hub", "a b", "hub: not a node id"),
                                ("client", "node-01", "the same node"),
                                ("channels", 0, "channels: expected an integer"),
                                ("queue", True, "queue: expected an integer"),
                                ("made_at", "yesterday", "made_at"),
                                ("made_by", 5, "made_by")):
        with pytest.raises(ValueError, match=message):
            record_from_mapping({**good, key: value})


def test_the_state_file_is_private_and_checked(tmp_path: Path) -> None:
    directory = tmp_path / "skeleton"
    store = FileLinkStore(directory)
    assert store.load() == ((), ())
    store.put(_record())
    store.put(_record("node-03", "node-04", offset=1))
    store.put(_record("node-02", "node-01", offset=2))  # the same pair: replaces
    assert store.load() == ((_record("node-03", "node-04", offset=1),
                             _record("node-02", "node-01", offset=2)), ())
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    assert store.delete("node-01", "node-02") and not store.delete("node-01", "node-02")
    # A bad record is skipped with a warning; a file that is not ours is refused.
    data = json.loads(store.path.read_text())
    data["links"].append({"hub": "x"})
    store.path.write_text(json.dumps(data))
    records, warnings = store.load()
    assert len(records) == 1 and "link 2 skipped: client" in warnings[0]
    store.path.chmod(0o666)
    with pytest.raises(UsageError, match="writable by other users"):
        store.load()
    store.path.unlink()
    store.path.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(UsageError, match="symlink is never followed"):
        store.load()
    store.path.unlink()
    store.path.write_text("{}")
    store.path.chmod(0o600)
    with pytest.raises(UsageError, match="not a JackTrip links file"):
        store.load()


# ---------------------------------------------------------------- link/unlink over scripted nodes


def _fake_cluster(handler: Handler) -> Cluster:
    return Cluster(Settings(), [A, B], connector=FakeRunner(handler))


def test_link_without_a_jack_server_starts_nothing(tmp_path: Path) -> None:
    from skeleton_app.ops.jack.links import link

    def node(call: Call) -> Reply:
        assert call.stdin is not None and b"jacktrip.sh" in call.stdin
        assert call.command.startswith("sh -s -- probe "), call.command  # never a start
        jack = "down" if call.node == "node-02" else "up"
        return Reply(0, f"jacktrip=ok\njack={jack}\n--- begin ports\n--- end ports\n")

    cluster = _fake_cluster(node)
    store = FileLinkStore(tmp_path)
    result = link(cluster, store, "node-01", "node-02")
    assert result.exit_code() == 1
    hub, client = result["node-01"].outcome, result["node-02"].outcome
    assert hub is not None and client is not None
    assert client.summary == ("no JACK server 'default' runs on node-02: start it first"
                              " (skeleton jack start --node node-02)")
    assert hub.summary == "not started: the other end cannot"
    assert store.load() == ((), ())
    with pytest.raises(UsageError, match="both ends are node-01"):
        link(cluster, store, "node-01", "10.213.0.11")  # the same node by its address


def test_unlink_forgets_a_link_whose_node_left(tmp_path: Path) -> None:
    from skeleton_app.errors import SelectionError
    from skeleton_app.ops.jack.links import unlink

    seen: list[str] = []

    def node(call: Call) -> Reply:
        seen.append(f"{call.node}: {call.command.split(' -- ', 1)[1].split()[0]}")
        return Reply(0, "state=not-running\n")

    cluster = _fake_cluster(node)
    store = FileLinkStore(tmp_path)
    store.put(_record("node-01", "node-09"))
    result = unlink(cluster, store, "node-01", "node-09")
    assert list(result) == ["node-01"] and result.exit_code() == 0
    assert seen == ["node-01: stop", "node-01: stop"]  # its two possible ends, nothing else
    assert store.load() == ((), ())
    with pytest.raises(SelectionError, match="unknown node 'node-09'"):
        unlink(cluster, store, "node-01", "node-09")  # no record left: an unknown node


def test_unlink_without_a_record_names_the_end_it_found(tmp_path: Path) -> None:
    """No record (a link left by hand, or a state file lost): each node's role is the end
    that was found running, "-" where none was; never both called "client"."""
    from skeleton_app.ops.jack.links import unlink

    def node(call: Call) -> Reply:
        # node-01 runs a hub (its end named after node-02), node-02 nothing.
        running = call.node == "node-01" and "hub" in call.command
        return Reply(0, "state=stopped\npid=4242\n" if running else "state=not-running\n")

    result = unlink(_fake_cluster(node), FileLinkStore(tmp_path), "node-01", "node-02")
    assert result.exit_code() == 0
    one, two = result["node-01"].outcome, result["node-02"].outcome
    assert one is not None and two is not None
    assert (one.role, one.state, two.role, two.state) == ("hub", "stopped", "-", "not-running")
