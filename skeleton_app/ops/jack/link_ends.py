"""One end of a JackTrip link on one node: its names, its jacktrip command line, and what
the node-side script `payloads/jacktrip.sh` answers about it (start, stop, probe).

A link between `hub` and `client` runs `jacktrip -S` (hub server mode) on the hub node and
`jacktrip -C HUB_HOST` on the client node, on port P = jack.udp_base_port + port_offset: the
hub listens on TCP P (JackTrip's hand-shake) and UDP P (-B, -U), the client binds UDP P and
asks the hub's TCP P (-B, -P). Each link has its own hub process, so links coexist.

JACK client names (what `jack_lsp` shows, what `jack connect` wires): on the hub node
`jt-CLIENT` (the hub names its worker after the client's -K), on the client node `jt-HUB`
(-J). One link joins two nodes at most, so the names are unique on a node. Neither end
patches ports by itself (-p 5, -D): `skeleton jack connect` wires them.

Everything parsed here comes from the node: node text, never trusted as a path or shown raw.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass

from skeleton_app.config import Settings
from skeleton_app.jack_link_records import LinkRecord
from skeleton_app.nodes import Node, validate_node_id
from skeleton_app.payloads import framing

STATE_DIR = ".skeleton-jack/links"  # under the app dir: the ends' pid files
_JACK_NAME_MAX = 63  # JACK's client names: 64 bytes with the NUL (jack_client_name_size)


def jack_name(peer: str) -> str:
    """The JACK client name of a link's end towards `peer`: `jt-PEER`, shortened with a hash
    when it would pass JACK's limit."""
    name = f"jt-{peer}"
    if len(name) <= _JACK_NAME_MAX:
        return name
    digest = hashlib.sha1(peer.encode()).hexdigest()[:8]
    return f"jt-{peer[:_JACK_NAME_MAX - 12]}-{digest}"


def end_name(role: str, peer: str) -> str:
    """`hub@PEER` / `client@PEER`: the end's pid file (`.pid`) and log (`jacktrip-END.log`)."""
    validate_node_id(peer)  # becomes a file name on the node
    return f"{role}@{peer}"


def link_port(settings: Settings, record: LinkRecord) -> int:
    return settings.jack.udp_base_port + record.port_offset


def state_dir(node: Node) -> str:
    return posixpath.join(node.app_dir, STATE_DIR)


def logs_dir(settings: Settings, node: Node) -> str:
    return settings.logs_dir_for(node)


@dataclass(frozen=True, slots=True)
class EndPlan:
    """How to start, find and stop one end: the node, its role, its file stem, the command
    line word that identifies its process (`token`), the ports that must be free, the argv."""

    node: Node
    role: str  # hub | client
    peer: str
    end: str
    token: str
    checks: tuple[str, ...]
    argv: tuple[str, ...]
    jack_client: str  # this end's JACK client name on its node

    def ports(self, channels: int) -> tuple[str, ...]:
        """The JACK ports this end has while the link is up."""
        return tuple(f"{self.jack_client}:{kind}_{i}" for kind in ("send", "receive")
                     for i in range(1, channels + 1))


def hub_plan(settings: Settings, record: LinkRecord, hub: Node) -> EndPlan:
    port = str(link_port(settings, record))
    j = settings.jack
    argv = (j.jacktrip, "-S", "-B", port, "-U", port, "-n", str(record.channels),
            "-q", str(record.queue), "--bufstrategy", str(record.buffer_strategy), "-p", "5")
    # The hub's command line names no client: its port is the word that identifies it.
    return EndPlan(hub, "hub", record.client, end_name("hub", record.client), port,
                   (f"tcp:{port}", f"udp:{port}"), argv, jack_name(record.client))


def client_plan(settings: Settings, record: LinkRecord, client: Node, hub: Node) -> EndPlan:
    port = str(link_port(settings, record))
    j = settings.jack
    own, remote = jack_name(record.hub), jack_name(record.client)
    argv = (j.jacktrip, "-C", hub.host, "-P", port, "-B", port, "-n", str(record.channels),
            "-q", str(record.queue), "--bufstrategy", str(record.buffer_strategy),
            "-J", own, "-K", remote, "-D")
    return EndPlan(client, "client", record.hub, end_name("client", record.hub), own,
                   (f"udp:{port}",), argv, own)


# ---------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class EndReply:
    """jacktrip.sh's answer to start or stop: `state` (started, already-running, missing,
    no-jack-tools, no-server, port-in-use, died, stopped, not-running, error)."""

    state: str
    pid: int | None = None
    message: str | None = None
    log_tail: tuple[str, ...] = ()


def parse_end_reply(text: str) -> EndReply:
    """Never raises: garbage is state `error`."""
    frame = framing.parse(text)
    head = framing.fields("state", frame.get("state"))
    pid = head.get("pid", "")
    return EndReply(state=head.get("state", "error"),
                    pid=int(pid) if pid.isascii() and pid.isdigit() else None,
                    message=frame.get("message"),
                    log_tail=tuple((frame.block("log_tail") or "").splitlines()[-20:]))


@dataclass(frozen=True, slots=True)
class RunningEnd:
    """A pid file of the node's state dir: the end, and whether its process still runs."""

    end: str
    running: bool
    pid: int | None = None
    token: str | None = None
    connected: bool = False

    @property
    def role(self) -> str:
        return self.end.partition("@")[0]

    @property
    def peer(self) -> str:
        return self.end.partition("@")[2]


@dataclass(frozen=True, slots=True)
class JacktripProcess:
    """A jacktrip process on the node (its pid and command line, node text)."""

    pid: int
    args: str


@dataclass(frozen=True, slots=True)
class NodeLinks:
    """What one node has of the mesh: jacktrip installed, its JACK server (up, down,
    missing), the ends in its state dir, every jacktrip process, every JACK port."""

    jacktrip: bool
    jack: str
    ends: tuple[RunningEnd, ...] = ()
    processes: tuple[JacktripProcess, ...] = ()
    ports: frozenset[str] = frozenset()

    def end(self, name: str) -> RunningEnd | None:
        for end in self.ends:
            if end.end == name:
                return end
        return None

    def as_dict(self) -> dict[str, object]:
        return {"jacktrip": self.jacktrip, "jack": self.jack,
                "ends": [{"end": e.end, "running": e.running, "pid": e.pid,
                          "connected": e.connected} for e in self.ends],
                "processes": [{"pid": p.pid, "args": p.args} for p in self.processes],
                "ports": sorted(self.ports)}


def parse_probe(text: str) -> NodeLinks:
    """jacktrip.sh's probe reply. Never raises: what cannot be read is left out."""
    frame = framing.parse(text)
    ends: list[RunningEnd] = []
    for value in frame.all("end"):
        f = framing.fields("end", value)
        name = f.get("end", "")
        if "@" not in name:
            continue
        pid = f.get("pid", "")
        ends.append(RunningEnd(
            end=name, running=f.get("state") == "running",
            pid=int(pid) if pid.isascii() and pid.isdigit() else None,
            token=f.get("token"), connected=f.get("connected") == "1"))
    processes: list[JacktripProcess] = []
    for value in frame.all("proc"):
        pid, _, args = value.partition(" ")
        if pid.isascii() and pid.isdigit():
            processes.append(JacktripProcess(int(pid), args.strip()))
    ports = frozenset(line.strip() for line in (frame.block("ports") or "").splitlines()
                      if line.strip() and not line.startswith((" ", "\t")))
    jack = frame.get("jack")
    return NodeLinks(jacktrip=frame.get("jacktrip") == "ok",
                     jack=jack if jack in ("up", "down", "missing") else "unknown",
                     ends=tuple(ends), processes=tuple(processes), ports=ports)
