"""`skeleton jack link|unlink|mesh`: JackTrip links between nodes, and what should exist
compared with what runs.

`link(cluster, store, A, B)`: JackTrip's hub server on A, its client on B (ops/jack/
link_ends.py: ports, names, command lines), both detached on their node with a pid file
under the app dir (payloads/jacktrip.sh; a process is signalled only when its start time,
boot id and command line are the recorded ones). Both nodes need a running JACK server:
`link` does not start one (a JACK server holds the node's sound card, and its driver is
chosen by `skeleton jack start`); it says so in one line. The link is up when the hub's
worker has the client's JACK ports on A (JackTrip creates them only once the client's
hand-shake arrived), the client's ports exist on B and the client's log shows the
connection; `link` waits for that at most `timeout` seconds. Any failure leaves nothing
half-started: a hub whose client did not start (or did not connect) is stopped again. The
record (what should exist) is written once the link is up, and kept when an existing
link is made again.

`unlink(cluster, store, A, B)`: stops both ends (either direction) and drops the record;
idempotent. `mesh(cluster, store, nodes)`: per record its state (up, down and why, missing
end: a node no longer known or not reachable) and every jacktrip process no record names
(unexpected). `down_links(...)`: per node, the recorded links that are not up (what `jack
status` flags).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from skeleton_app import cancel
from skeleton_app.cluster import Cluster
from skeleton_app.errors import NodeErrorKind, SelectionError, UsageError
from skeleton_app.jack_link_records import LinkRecord, LinkStore
from skeleton_app.nodes import Node
from skeleton_app.ops.jack import link_ends as ends
from skeleton_app.ops.jack.link_ends import EndPlan, EndReply, NodeLinks
from skeleton_app.payloads import invocation
from skeleton_app.results import ClusterResult, NodeResult, failure
from skeleton_app.ssh.runner import RunOptions

LINK_TIMEOUT = 15.0  # seconds for both ends to see each other (measured: ~1 s on a LAN)
_SCRIPT_TIMEOUT = 30.0  # one jacktrip.sh call: a start waits 1 s, a stop up to 10 s
_PACKAGES = {"missing": "jacktrip", "no-jack-tools": "jackd2"}


# ---------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class LinkEndOutcome:
    """One node's part in `link` or `unlink`: its end's role, the peer, what happened."""

    role: str  # hub | client
    peer: str
    state: str  # up, already-up, stopped, not-running, failed, stopped-again, not-started
    summary: str
    pid: int | None = None
    port: int | None = None
    jack_client: str | None = None
    log_tail: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "peer": self.peer, "state": self.state,
                "summary": self.summary, "pid": self.pid, "port": self.port,
                "jack_client": self.jack_client, "log_tail": list(self.log_tail)}


@dataclass(frozen=True, slots=True)
class LinkState:
    """One row of `jack mesh`: a recorded link and its state, or (record None) a jacktrip
    process that no record names (`unexpected`, on `hub`'s node)."""

    hub: str
    client: str
    state: str  # up | down | missing end | unexpected
    detail: str = ""
    record: LinkRecord | None = None
    port: int | None = None
    pids: tuple[int, ...] = ()

    def touches(self, node: str) -> bool:
        return node in (self.hub, self.client)

    def as_dict(self) -> dict[str, Any]:
        r = self.record
        return {"hub": self.hub, "client": self.client, "state": self.state,
                "detail": self.detail, "port": self.port, "pids": list(self.pids),
                "channels": r.channels if r else None, "queue": r.queue if r else None,
                "buffer_strategy": r.buffer_strategy if r else None,
                "port_offset": r.port_offset if r else None,
                "made_at": r.made_at.isoformat() if r else None,
                "made_by": r.made_by if r else None}


@dataclass(frozen=True, slots=True)
class Mesh:
    """`jack mesh`: every link's state, the probe of every node looked at, warnings (bad
    records skipped)."""

    links: tuple[LinkState, ...]
    result: ClusterResult[NodeLinks]

    def as_dict(self) -> dict[str, Any]:
        return {"links": [s.as_dict() for s in self.links],
                "warnings": list(self.result.warnings),
                "nodes": {n: r.to_dict() for n, r in self.result.items()}}


# ---------------------------------------------------------------- node calls


def _script(cluster: Cluster, node: Node, *args: str,
            cancellable: bool = True) -> NodeResult[Any]:
    settings = cluster.settings
    command, stdin = invocation("jacktrip.sh", args[0], ends.state_dir(node),
                                ends.logs_dir(settings, node), *args[1:])
    return cluster.connector.run(node, command, RunOptions(
        timeout=_SCRIPT_TIMEOUT, stdin=stdin, cancellable=cancellable))


def probe(cluster: Cluster, node: Node) -> NodeResult[NodeLinks]:
    """One round trip: the node's ends, jacktrip processes and JACK ports."""
    j = cluster.settings.jack
    r = _script(cluster, node, "probe", j.jacktrip, j.server_name)
    if r.error_kind is not None:
        return r
    if r.exit_code != 0:
        return replace(r, error_kind=NodeErrorKind.ERROR,
                       error=f"probe failed: {_last(r.stderr) or f'exit {r.exit_code}'}")
    return replace(r, outcome=ends.parse_probe(r.stdout))


def _start(cluster: Cluster, plan: EndPlan) -> tuple[NodeResult[Any], EndReply | None]:
    r = _script(cluster, plan.node, "start", plan.end, plan.token,
                cluster.settings.jack.server_name, " ".join(plan.checks), "--", *plan.argv)
    if r.error_kind is not None:
        return r, None
    return r, ends.parse_end_reply(r.stdout)


def _stop(cluster: Cluster, plan: EndPlan) -> tuple[NodeResult[Any], EndReply | None]:
    # Stopping is clean-up too: it runs after a Ctrl-C (bounded by its timeout).
    r = _script(cluster, plan.node, "stop", plan.end, plan.token,
                cluster.settings.jack.jacktrip, cancellable=False)
    if r.error_kind is not None:
        return r, None
    return r, ends.parse_end_reply(r.stdout)


def _last(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# ---------------------------------------------------------------- link


def link(cluster: Cluster, store: LinkStore, hub_ref: str, client_ref: str, *,
         channels: int | None = None, port_offset: int | None = None,
         timeout: float = LINK_TIMEOUT, made_by: str = "") -> ClusterResult[LinkEndOutcome]:
    """Make (or restore) the link hub -> client; see the module docstring. Unknown node,
    same node twice, a port past 65535, a link between the two in the other direction:
    UsageError before any node is contacted."""
    hub, client = _pair(cluster, hub_ref, client_ref)
    records, warnings = store.load()
    existing = next((r for r in records if r.joins(hub.id, client.id)), None)
    if existing is not None and existing.hub != hub.id:
        raise UsageError(f"{hub.id} and {client.id} are linked already, with the hub on"
                         f" {existing.hub}: `skeleton jack unlink {existing.hub}"
                         f" {existing.client}` first")
    j = cluster.settings.jack
    if port_offset is None:
        port_offset = existing.port_offset if existing else _free_offset(records)
    record = LinkRecord(
        hub.id, client.id, channels or (existing.channels if existing else j.channels),
        port_offset, j.queue, j.buffer_strategy, datetime.now(UTC), made_by)
    if not 1 <= j.udp_base_port + port_offset <= 65535:
        raise UsageError(f"--port-offset {port_offset}: jack.udp_base_port"
                         f" {j.udp_base_port} + offset passes 65535")
    started = time.monotonic()
    hub_plan = ends.hub_plan(cluster.settings, record, hub)
    client_plan = ends.client_plan(cluster.settings, record, client, hub)
    same = existing is not None and existing.same_settings(record)
    # Made again with other settings: the ends of the old ones go first (their pid files
    # name them by the old port and client name).
    old = None if existing is None or same else (
        ends.hub_plan(cluster.settings, existing, hub),
        ends.client_plan(cluster.settings, existing, client, hub))
    results = _make(cluster, record, hub_plan, client_plan, timeout, same=same, old=old)
    if all(r.ok for r in results) and not (existing and existing.same_settings(record)):
        store.put(record)
    return ClusterResult(results, operation="jack link",
                         duration=time.monotonic() - started, warnings=warnings)


def _pair(cluster: Cluster, a: str, b: str) -> tuple[Node, Node]:
    first, second = cluster.node(a), cluster.node(b)
    if first.id == second.id:
        raise UsageError(f"a link joins two nodes: both ends are {first.id}")
    return first, second


def _free_offset(records: Sequence[LinkRecord]) -> int:
    """The smallest port offset no recorded link uses (one port per link, mesh-wide)."""
    used = {r.port_offset for r in records}
    return next(n for n in range(len(used) + 1) if n not in used)


def _make(cluster: Cluster, record: LinkRecord, hub: EndPlan, client: EndPlan,
          timeout: float, *, same: bool,
          old: tuple[EndPlan, EndPlan] | None) -> list[NodeResult[LinkEndOutcome]]:
    port = ends.link_port(cluster.settings, record)
    probes = cluster.map(lambda n: probe(cluster, n), [hub.node, client.node],
                         operation="jack probe")
    refused = _refusals(cluster, probes, hub, client, port)
    if refused is not None:
        return refused
    if same and _is_up(record, hub, client, probes.outcomes()):
        return [_ok(p, port, "already-up", "already up") for p in (hub, client)]
    # Whatever runs of this link (a dropped client, a hub left alone) goes first: a fresh
    # hub gives the client the hub's first UDP slot, the one `mesh` expects.
    for plan in (*(old or ()), client, hub):
        _stop(cluster, plan)
    r, reply = _start(cluster, hub)
    if reply is None or reply.state not in ("started", "already-running"):
        if reply is None:  # cut off (Ctrl-C, a lost link): it may have started all the same
            _stop(cluster, hub)
        return [_start_failure(r, reply, hub, port),
                _not_started(client, port, f"the hub on {hub.node.id} did not start")]
    r, creply = _start(cluster, client)
    if creply is None or creply.state not in ("started", "already-running"):
        _stop(cluster, hub)
        return [_not_started(hub, port, f"stopped again: the client on {client.node.id}"
                             " did not start"), _start_failure(r, creply, client, port)]
    if _wait_up(cluster, record, hub, client, timeout):
        return [_ok(hub, port, "up", f"up (pid {reply.pid})", reply.pid),
                _ok(client, port, "up", f"up (pid {creply.pid})", creply.pid)]
    tail = _log_tail(cluster, client)
    _stop(cluster, client)
    _stop(cluster, hub)
    why = (f"the link did not come up within {timeout:g} s (client -> {hub.node.host}:"
           f"{port}): both ends stopped again")
    if cancel.cancelled():
        why = f"{cancel.INTERRUPTED} before the link was up: both ends stopped again"
    return [_not_started(hub, port, why),
            NodeResult(node=client.node.id, exit_code=1, outcome=LinkEndOutcome(
                client.role, client.peer, "failed", why, port=port,
                jack_client=client.jack_client, log_tail=tail))]


def _refusals(cluster: Cluster, probes: ClusterResult[NodeLinks], hub: EndPlan,
              client: EndPlan, port: int) -> list[NodeResult[LinkEndOutcome]] | None:
    """One line per node that cannot take its end (unreachable, no jacktrip, no JACK
    server), or None when both can: then nothing has been started yet."""
    server = cluster.settings.jack.server_name
    out: list[NodeResult[LinkEndOutcome]] = []
    for plan in (hub, client):
        r = probes[plan.node.id]
        node = plan.node.id
        if r.error_kind is not None or r.outcome is None:
            out.append(failure(node, r.error_kind or NodeErrorKind.ERROR,
                               r.error or "no probe reply"))
            continue
        said = r.outcome
        if not said.jacktrip:
            why = (f"{cluster.settings.jack.jacktrip} is not installed on {node}"
                   " (Debian package jacktrip)")
        elif said.jack == "missing":
            why = f"jack_lsp is not installed on {node} (Debian package jackd2)"
        elif said.jack != "up":
            why = (f"no JACK server {server!r} runs on {node}: start it first"
                   f" (skeleton jack start --node {node})")
        else:
            out.append(_ok(plan, port, "ready", "ready"))
            continue
        out.append(NodeResult(node=node, exit_code=1, outcome=LinkEndOutcome(
            plan.role, plan.peer, "failed", why, port=port)))
    if all(r.ok for r in out):
        return None
    return [r if not r.ok else _not_started(p, port, "not started: the other end cannot")
            for r, p in zip(out, (hub, client), strict=True)]


def _ok(plan: EndPlan, port: int, state: str, summary: str,
        pid: int | None = None) -> NodeResult[LinkEndOutcome]:
    return NodeResult(node=plan.node.id, exit_code=0, outcome=LinkEndOutcome(
        plan.role, plan.peer, state, summary, pid=pid, port=port,
        jack_client=plan.jack_client))


def _not_started(plan: EndPlan, port: int, why: str) -> NodeResult[LinkEndOutcome]:
    return NodeResult(node=plan.node.id, exit_code=1, outcome=LinkEndOutcome(
        plan.role, plan.peer, "not-started", why, port=port, jack_client=plan.jack_client))


def _start_failure(r: NodeResult[Any], reply: EndReply | None, plan: EndPlan,
                   port: int) -> NodeResult[LinkEndOutcome]:
    if reply is None:
        return r  # unreachable, timed out: the node's own error
    node = plan.node.id
    message = reply.message or ""
    if reply.state == "port-in-use":
        why = f"{message} on {node}: pick another --port-offset"
    elif reply.state in _PACKAGES:
        why = f"{message} on {node}" if message else f"Debian package {_PACKAGES[reply.state]}"
    elif reply.state == "died":
        why = f"jacktrip exited at once on {node}: {_jacktrip_error(reply.log_tail)}"
    else:
        why = f"{reply.state}: {message or _last(r.stderr) or 'no reply'}"
    return NodeResult(node=node, exit_code=1, outcome=LinkEndOutcome(
        plan.role, plan.peer, "failed", why, port=port, jack_client=plan.jack_client,
        log_tail=reply.log_tail))


def _jacktrip_error(tail: Sequence[str]) -> str:
    """The line of jacktrip's output that says why it stopped (a port in use is the common
    one: it binds TCP and UDP itself), else its last line."""
    for line in tail:
        low = line.lower()
        if "already in use" in low or "could not bind" in low:
            return f"a port is already in use ({line.strip()})"
    for line in reversed(tail):
        if "error" in line.lower():
            return line.strip()
    return tail[-1].strip() if tail else "no output"


def _wait_up(cluster: Cluster, record: LinkRecord, hub: EndPlan, client: EndPlan,
             timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        probes = cluster.map(lambda n: probe(cluster, n), [hub.node, client.node],
                             operation="jack probe")
        if _is_up(record, hub, client, probes.outcomes()):
            return True
        if time.monotonic() >= deadline or cancel.cancelled():
            return False
        time.sleep(0.3)


def _is_up(record: LinkRecord, hub: EndPlan, client: EndPlan,
           seen: Mapping[str, NodeLinks]) -> bool:
    return not _why_down(record, hub, client, seen)


def _why_down(record: LinkRecord, hub: EndPlan, client: EndPlan,
              seen: Mapping[str, NodeLinks]) -> str:
    """'' when the link is up, else why not, in a few words."""
    for plan in (hub, client):
        got = seen.get(plan.node.id)
        if got is None:
            return f"{plan.node.id} not reachable"
        end = got.end(plan.end)
        if end is None or not end.running:
            return f"{plan.role} end not running on {plan.node.id}"
        missing = [p for p in plan.ports(record.channels) if p not in got.ports]
        if missing:
            return f"{plan.node.id} has no JACK port {missing[0]}"
    client_end = seen[client.node.id].end(client.end)
    if client_end is not None and not client_end.connected:
        return f"the client on {client.node.id} has not connected"
    return ""


def _log_tail(cluster: Cluster, plan: EndPlan) -> tuple[str, ...]:
    """The last lines of an end's log, for a link that did not come up."""
    log = f"{ends.logs_dir(cluster.settings, plan.node)}/jacktrip-{plan.end}.log"
    r = cluster.connector.run(plan.node, f"tail -n 12 -- {shlex.quote(log)} 2>/dev/null",
                              RunOptions(timeout=10.0, cancellable=False))
    return tuple(r.stdout.splitlines()) if r.ok else ()


# ---------------------------------------------------------------- unlink


def unlink(cluster: Cluster, store: LinkStore, a_ref: str,
           b_ref: str) -> ClusterResult[LinkEndOutcome]:
    """Stop both ends of the link joining A and B (either direction) and drop its record.
    Idempotent: with nothing running and no record, both nodes say `not running`. A
    recorded link whose node is no longer known is forgotten, its known end stopped."""
    records, warnings = store.load()
    try:
        a, b = _pair(cluster, a_ref, b_ref)
        stop_on = [a, b]
    except SelectionError:
        gone = next((r for r in records if r.joins(a_ref, b_ref)), None)
        if gone is None:
            raise
        known = {n.id for n in cluster.nodes}
        stop_on = [cluster.node(n) for n in gone.ends if n in known]
        # The node that left: a stand-in with its id, for the names of the other's end.
        a, b = (cluster.node(n) if n in known else Node(id=n, host="127.0.0.1")
                for n in (a_ref, b_ref))
    record = next((r for r in records if r.joins(a.id, b.id)), None)
    started = time.monotonic()
    base = record or LinkRecord(a.id, b.id, cluster.settings.jack.channels, 0, 1, 0,
                                datetime.now(UTC), "")
    # Both directions: an end left by a link recorded the other way round goes too.
    plans: dict[str, list[EndPlan]] = {a.id: [], b.id: []}
    for hub, client in ((a, b), (b, a)):
        r = replace(base, hub=hub.id, client=client.id)
        plans[hub.id].append(ends.hub_plan(cluster.settings, r, hub))
        plans[client.id].append(ends.client_plan(cluster.settings, r, client, hub))

    def stop_all(node: Node) -> NodeResult[LinkEndOutcome]:
        said: list[str] = []
        stopped_roles: list[str] = []
        for plan in sorted(plans[node.id], key=lambda p: p.role != "client"):
            r, reply = _stop(cluster, plan)
            if reply is None:
                return r
            if reply.state == "stopped":
                said.append(f"{plan.role} end stopped (pid {reply.pid})")
                stopped_roles.append(plan.role)
            elif reply.state != "not-running":
                return replace(r, exit_code=1, outcome=LinkEndOutcome(
                    plan.role, plan.peer, "failed", reply.message or reply.state))
        # The recorded role; without a record, the role of the end found running ("-":
        # none was, and nothing says which end this node would have been).
        if record is not None:
            role = "hub" if record.hub == node.id else "client"
        else:
            role = "+".join(stopped_roles) or "-"
        peer = b.id if node.id == a.id else a.id
        return NodeResult(node=node.id, exit_code=0, outcome=LinkEndOutcome(
            role, peer, "stopped" if said else "not-running",
            "; ".join(said) or "not running"))

    result = cluster.map(stop_all, stop_on, operation="jack unlink")
    if all(r.ok for r in result.values()):
        store.delete(a.id, b.id)
    return ClusterResult(result.values(), operation="jack unlink",
                         duration=time.monotonic() - started, warnings=warnings)


# ---------------------------------------------------------------- mesh


def mesh(cluster: Cluster, store: LinkStore, nodes: Sequence[Node] | None = None, *,
         fanout: int | None = None) -> Mesh:
    """Every recorded link's state, and every jacktrip process no record names, on the
    ends of the records and on `nodes` (default: every node)."""
    records, warnings = store.load()
    known = {n.id: n for n in cluster.nodes}
    look = {n.id: n for n in (cluster.nodes if nodes is None else nodes)}
    for record in records:
        for end in record.ends:
            if end in known:
                look.setdefault(end, known[end])
    probes = cluster.map(lambda n: probe(cluster, n), list(look.values()), fanout=fanout,
                         operation="jack mesh")
    seen = probes.outcomes()
    states = [_state(cluster, record, known, seen, probes) for record in records]
    states += _unexpected(records, seen, known)
    result: ClusterResult[NodeLinks] = ClusterResult(
        probes.values(), operation="jack mesh", duration=probes.duration,
        warnings=warnings)
    return Mesh(tuple(states), result)


def _state(cluster: Cluster, record: LinkRecord, known: Mapping[str, Node],
           seen: Mapping[str, NodeLinks], probes: ClusterResult[NodeLinks]) -> LinkState:
    port = ends.link_port(cluster.settings, record)
    gone = [n for n in record.ends if n not in known]
    if gone:
        return LinkState(record.hub, record.client, "missing end",
                         f"{', '.join(gone)} is no longer a known node", record, port)
    unseen = [n for n in record.ends if n not in seen]
    if unseen:
        why = probes[unseen[0]].summary() if unseen[0] in probes else "not probed"
        return LinkState(record.hub, record.client, "missing end",
                         f"{unseen[0]}: {why}", record, port)
    hub = ends.hub_plan(cluster.settings, record, known[record.hub])
    client = ends.client_plan(cluster.settings, record, known[record.client],
                              known[record.hub])
    pids = tuple(e.pid for e in (seen[hub.node.id].end(hub.end),
                                 seen[client.node.id].end(client.end))
                 if e is not None and e.running and e.pid is not None)
    why = _why_down(record, hub, client, seen)
    return LinkState(record.hub, record.client, "down" if why else "up", why, record, port,
                     pids)


def _unexpected(records: Sequence[LinkRecord], seen: Mapping[str, NodeLinks],
                known: Mapping[str, Node]) -> list[LinkState]:
    """Every running jacktrip process that is not a recorded link's end on its node."""
    out: list[LinkState] = []
    for node, links in seen.items():
        expected: set[int] = set()
        for end in links.ends:
            recorded = any(r.joins(node, end.peer) and (r.hub == node) == (end.role == "hub")
                           for r in records)
            if recorded and end.running and end.pid is not None:
                expected.add(end.pid)
        for proc in links.processes:
            if proc.pid in expected:
                continue
            out.append(LinkState(node, "?", "unexpected",
                                 f"jacktrip pid {proc.pid} that no link record names:"
                                 f" {proc.args[:160]}", pids=(proc.pid,)))
    return out


def down_links(mesh_: Mesh) -> dict[str, tuple[LinkState, ...]]:
    """Per node id, the recorded links touching it that are not up (what `skeleton jack
    status` flags as a dropped link); nodes with none are left out."""
    out: dict[str, list[LinkState]] = {}
    for state in mesh_.links:
        if state.record is None or state.state == "up":
            continue
        for node in state.record.ends:
            out.setdefault(node, []).append(state)
    return {node: tuple(states) for node, states in out.items()}

