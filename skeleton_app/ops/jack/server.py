"""`skeleton jack status|start|stop|connect|disconnect`: each node's JACK server (jackd).

One round trip per node and action: `skeleton_app/payloads/jack.sh` is sent on stdin with
its arguments quoted. `start` runs jackd with the node's driver (`settings.jack.driver_for`,
`JackDriver.argv`) fully detached (setsid, stdio to `<logs_dir>/jackd.log`), records it in
`<app_dir>/.skeleton-jackd.pid` (`PID START_TIME BOOT_ID TOKEN`: a recycled pid never passes
for it, and /proc/PID/cmdline must name jackd), and waits until the server answers
`jack_lsp`, at most `START_TIMEOUT` s. A server that already answers is never started twice:
ours is `already running`, one we did not start is left as it is. `stop` signals only the
recorded jackd: SIGTERM, SIGKILL after `STOP_GRACE` s. A Ctrl-C during `start` stops the
jackd that start launched (on the node, and again from here through the start's token), so
nothing is left half-started.

`status` gives per node: up or not, the sample rate (jack_samplerate), the period in frames
(jack_bufsize), the xruns jackd logged since our start (lines about an xrun in its log: there
is no jack_* tool that counts them), and every port with its connections (`jack_lsp -c -p`,
parsed by `ports.parse_lsp`).

`connect`/`disconnect` check both ports against the node's `jack_lsp` first: a port that does
not exist is one line with its near matches, an existing connection (or a missing one for
disconnect) is success that says so.
"""

from __future__ import annotations

import posixpath
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from skeleton_app import payloads
from skeleton_app.cluster import Cluster
from skeleton_app.errors import NodeErrorKind, UsageError
from skeleton_app.nodes import Node
from skeleton_app.ops.jack import ports as jack_ports
from skeleton_app.ops.jack.ports import JackPort
from skeleton_app.payloads import framing
from skeleton_app.results import ClusterResult, NodeResult, failure

SCRIPT = "jack.sh"
PID_FILE = ".skeleton-jackd.pid"  # relative to the app dir
LOG_FILE = "jackd.log"  # in the node's logs dir; the one before it is jackd.log.1
START_TIMEOUT = 15.0  # seconds for a new server to answer (a dummy driver takes ~0.3 s)
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
_PORT_MAX = 320  # JACK's full port name: client (64) + ':' + port (256)
# States in which a server answers clients.
UP_STATES = ("running", "foreign", "started", "already-running")
OnResult = Callable[[NodeResult[Any]], None]


@dataclass(frozen=True, slots=True)
class JackServerOutcome:
    """One node's JACK server after status/start/stop. `state` is jack.sh's (status: running,
    stopped, foreign, unresponsive, missing; start: started, already-running, died, error,
    missing; stop: stopped, not-running, foreign, error); `summary` is a line for people."""

    action: str
    state: str
    summary: str
    server: str
    pid: int | None = None
    sample_rate: int | None = None
    period: int | None = None  # frames per period
    xruns: int | None = None  # since our start; None for a server we did not start
    ports: tuple[JackPort, ...] = ()
    signal: str | None = None  # stop: TERM or KILL
    message: str | None = None
    log_tail: tuple[str, ...] = ()

    @property
    def up(self) -> bool:
        return self.state in UP_STATES

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "state": self.state, "up": self.up,
                "summary": self.summary, "server": self.server, "pid": self.pid,
                "sample_rate": self.sample_rate, "period": self.period, "xruns": self.xruns,
                "ports": [p.as_dict() for p in self.ports], "signal": self.signal,
                "message": self.message, "log_tail": list(self.log_tail)}


@dataclass(frozen=True, slots=True)
class JackConnectOutcome:
    """One `connect`/`disconnect` of two ports on a node. `state`: connected, disconnected,
    already-connected, not-connected (done: exit 0), no-port (`missing_port` does not exist;
    `near` are the closest names), not-running, missing (jackd2 not installed), error."""

    action: str
    source: str
    dest: str
    state: str
    summary: str
    missing_port: str | None = None
    near: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "source": self.source, "dest": self.dest,
                "state": self.state, "summary": self.summary,
                "missing_port": self.missing_port, "near": list(self.near)}


# ------------------------------------------------------------------------ the node side


def pid_file(node: Node) -> str:
    return posixpath.join(node.app_dir, PID_FILE)


def _invocation(cluster: Cluster, node: Node, action: str, *, token: str = "",
                extra: Sequence[str] = ()) -> tuple[str, bytes]:
    settings = cluster.settings
    jack = settings.jack
    args = [action, pid_file(node), posixpath.join(settings.logs_dir_for(node), LOG_FILE),
            jack.server_name, jack.jackd, f"{STOP_GRACE:g}", f"{START_TIMEOUT:g}", token]
    if extra:
        args += ["--", *extra]
    return payloads.invocation(SCRIPT, *args)


def _run(cluster: Cluster, node: Node, action: str, *, token: str = "",
         extra: Sequence[str] = (), cancellable: bool = True) -> NodeResult[Any]:
    from skeleton_app.ssh.runner import RunOptions

    command, script = _invocation(cluster, node, action, token=token, extra=extra)
    # start: the server's answer, a stop of a server that did not answer, a margin for a
    # loaded node; stop: the grace, 5 s of SIGKILL wait and a margin.
    timeout = START_TIMEOUT + STOP_GRACE + 30.0 if action == "start" else STOP_GRACE + 25.0
    return cluster.connector.run(node, command, RunOptions(
        timeout=timeout, stdin=script, cancellable=cancellable))


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


def parse_reply(action: str, server: str, text: str) -> JackServerOutcome:
    """jack.sh's reply as an outcome (header in the script). Never raises: garbage is state
    error."""
    frame = framing.parse(text)
    state = frame.first("state") or "error"
    messages = frame.all("message")
    ports = jack_ports.parse_lsp(frame.block("ports") or "")
    outcome = JackServerOutcome(
        action=action, state=state, summary="", server=server, pid=_int(frame.get("pid")),
        sample_rate=_int(frame.get("rate")), period=_int(frame.get("period")),
        xruns=_int(frame.get("xruns")), ports=ports, signal=frame.get("signal"),
        message="; ".join(messages) or None,
        log_tail=tuple((frame.block("log_tail") or "").splitlines()))
    return replace(outcome, summary=describe(outcome))


def state_words(o: JackServerOutcome) -> str:
    """The state for people: 'running (pid 12)', 'stopped with SIGKILL after the grace'."""
    words = {"foreign": "running (not started by skeleton)", "unresponsive": "not answering",
             "already-running": "already running", "died": "died at start",
             "not-running": "not running"}.get(o.state, o.state)
    if o.pid is not None and o.state != "foreign":
        words += f" (pid {o.pid})"
    if o.state == "stopped" and o.signal == "KILL":
        words += " with SIGKILL after the grace period"
    return words


def describe(o: JackServerOutcome) -> str:
    """One line for people: 'running (pid 12), 48000 Hz, 256 frames, 0 xruns, 4 ports'."""
    words = state_words(o)
    facts = []
    if o.sample_rate is not None:
        facts.append(f"{o.sample_rate} Hz")
    if o.period is not None:
        facts.append(f"{o.period} frames")
    if o.xruns is not None:
        facts.append(f"{o.xruns} xrun{'' if o.xruns == 1 else 's'}")
    if o.action == "status" and o.up:
        facts.append(f"{len(o.ports)} port{'' if len(o.ports) == 1 else 's'}")
    if facts:
        words += ", " + ", ".join(facts)
    if o.message:
        words += f": {o.message}"
    return words


def _with_outcome(r: NodeResult[Any], action: str, server: str,
                  started: float) -> NodeResult[JackServerOutcome]:
    if r.error_kind is not None:
        return r
    outcome = parse_reply(action, server, r.stdout)
    if outcome.state == "error" and not outcome.message and r.stderr.strip():
        outcome = replace(outcome, message=r.stderr.strip().splitlines()[-1])
        outcome = replace(outcome, summary=describe(outcome))
    # The exit code stays jack.sh's: 0 done, 1 failed, 3 status of a stopped server (LSB).
    return replace(r, duration=time.monotonic() - started, outcome=outcome)


# ------------------------------------------------------------------------ one node


def status_node(cluster: Cluster, node: Node) -> NodeResult[JackServerOutcome]:
    started = time.monotonic()
    return _with_outcome(_run(cluster, node, "status"), "status",
                         cluster.settings.jack.server_name, started)


def start_node(cluster: Cluster, node: Node) -> NodeResult[JackServerOutcome]:
    """Start the node's jackd unless a server answers; a Ctrl-C meanwhile stops what this
    start launched (the node's script traps the signal; the abort here, which runs even after
    the cancel, covers a script killed before its trap ran)."""
    settings = cluster.settings
    argv = settings.jack.driver_for(node).argv(settings.jack.jackd, settings.jack.server_name)
    token = secrets.token_hex(8)
    started = time.monotonic()
    r = _run(cluster, node, "start", token=token, extra=argv)
    if r.error_kind is NodeErrorKind.INTERRUPTED:
        abort = _run(cluster, node, "abort", token=token, cancellable=False)
        said = parse_reply("abort", settings.jack.server_name, abort.stdout)
        if abort.error_kind is None and said.state == "stopped":
            return replace(r, error=f"{r.error}; the jackd it started (pid {said.pid}) was"
                                    " stopped again")
        return r
    return _with_outcome(r, "start", settings.jack.server_name, started)


def stop_node(cluster: Cluster, node: Node) -> NodeResult[JackServerOutcome]:
    started = time.monotonic()
    return _with_outcome(_run(cluster, node, "stop"), "stop",
                         cluster.settings.jack.server_name, started)


# ------------------------------------------------------------------------ the operations


_ACTIONS: dict[str, Callable[[Cluster, Node], NodeResult[JackServerOutcome]]] = {
    "status": status_node, "start": start_node, "stop": stop_node}


def server_control(cluster: Cluster, nodes: Sequence[Node], action: str, *,
                   fanout: int | None = None,
                   on_result: OnResult | None = None) -> ClusterResult[JackServerOutcome]:
    """status | start | stop the JACK server on `nodes`, in parallel (bounded by fanout).
    start and stop are idempotent. status exits 3 on a node whose server is stopped (so the
    command's exit code is 1 when some server is down), as `cluster daemon status` does."""
    fn = _ACTIONS.get(action)
    if fn is None:
        raise UsageError(f"unknown jack action {action!r} (expected status, start or stop)")
    return cluster.map(lambda node: fn(cluster, node), nodes, fanout=fanout,
                       operation=f"jack {action}", on_result=on_result)


def check_port_name(name: str) -> str:
    """A port name as typed: refused before anything runs when no JACK port looks like it."""
    # A leading '-' would reach jack_connect as an option.
    if (not name or len(name) > _PORT_MAX or ":" not in name or name.startswith("-")
            or any(c in name for c in "\n\r\0")):
        raise UsageError(f"invalid JACK port name {name[:80]!r}: expected CLIENT:PORT on one"
                         " line, as `skeleton jack status` lists them")
    return name


def connect_ports(cluster: Cluster, node: Node, source: str, dest: str, *,
                  disconnect: bool = False) -> ClusterResult[JackConnectOutcome]:
    """Connect (or disconnect) two ports of `node`'s server after checking both exist."""
    check_port_name(source)
    check_port_name(dest)
    action = "disconnect" if disconnect else "connect"
    return cluster.map(lambda n: _connect_one(cluster, n, action, source, dest), [node],
                       fanout=1, operation=f"jack {action}")


def _connect_one(cluster: Cluster, node: Node, action: str, source: str,
                 dest: str) -> NodeResult[JackConnectOutcome]:
    started = time.monotonic()
    server = cluster.settings.jack.server_name

    def outcome(r: NodeResult[Any], state: str, summary: str, *, exit_code: int,
                missing: str | None = None,
                near: Sequence[str] = ()) -> NodeResult[JackConnectOutcome]:
        return replace(r, exit_code=exit_code, duration=time.monotonic() - started,
                       outcome=JackConnectOutcome(action, source, dest, state, summary,
                                                  missing, tuple(near)))

    probe = status_node(cluster, node)
    if probe.error_kind is not None or probe.outcome is None:
        return failure(node.id, probe.error_kind or NodeErrorKind.ERROR,
                       probe.error or "no reply from jack.sh", probe.duration)
    seen = probe.outcome
    if seen.state == "missing":
        return outcome(probe, "missing", seen.message or "jackd2 is not installed",
                       exit_code=1)
    if not seen.up:
        return outcome(probe, "not-running", f"the JACK server {server} is not running on"
                       f" {node.id} ({seen.summary}): skeleton jack start -n {node.id}",
                       exit_code=1)
    for name in (source, dest):
        if jack_ports.find(seen.ports, name) is None:
            near = jack_ports.near_matches(seen.ports, name)
            hint = f"; near matches: {', '.join(near)}" if near else ""
            return outcome(probe, "no-port", f"no port {name} on {node.id}{hint}",
                           exit_code=1, missing=name, near=near)
    linked = jack_ports.connected(seen.ports, source, dest)
    if action == "connect" and linked:
        return outcome(probe, "already-connected", f"already connected: {source} ->"
                       f" {dest}", exit_code=0)
    if action == "disconnect" and not linked:
        return outcome(probe, "not-connected", f"not connected: {source} -> {dest}"
                       " (nothing to do)", exit_code=0)
    r = _run(cluster, node, action, extra=(source, dest))
    if r.error_kind is not None:
        return r
    frame = framing.parse(r.stdout)
    state = frame.first("state") or "error"
    if r.exit_code == 0:
        verb = "connected" if action == "connect" else "disconnected"
        return outcome(r, state, f"{verb}: {source} -> {dest}", exit_code=0)
    why = frame.get("message") or (r.stderr.strip().splitlines() or ["no reply"])[-1]
    return outcome(r, state, f"{action} failed: {why}", exit_code=r.exit_code or 1)
