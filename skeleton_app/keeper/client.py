"""The controller's side of warm mode: `KeeperRunner`, a `Runner` that hands commands to the
keeper, and the small requests `skeleton keeper status|stop` make.

Light on purpose (the warm fast path loads it): the standard library, the keeper's protocol
and paths, and the values (nodes, results, errors); Paramiko only when the keeper cannot be
used and the command runs here after all (`_direct`).

Never a hang, never a command run twice:
- the first request of a command checks the keeper with a 100 ms budget (connect + hello);
  a dead or wedged keeper is bypassed (the command connects itself, as without warm mode)
  and a new one is started when the command ends (`spawn`), which takes the socket over;
- a run the keeper did not confirm ("started") runs here instead; one it confirmed and then
  lost (the keeper was killed) is that node's `lost` error, exit 4: it may have run;
- while a command runs the keeper says "tick" every second: 10 s of silence is a lost keeper.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from skeleton_app.cancel import INTERRUPTED, TOKEN
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.keeper import protocol, thin
from skeleton_app.keeper.paths import KeeperPaths
from skeleton_app.nodes import Node
from skeleton_app.results import NodeResult, failure

if TYPE_CHECKING:
    from skeleton_app.config import SSHSettings
    from skeleton_app.ssh.pool import Connector
    from skeleton_app.ssh.runner import RunOptions, Session

BUDGET = 0.1  # seconds: a keeper that does not answer hello within this is bypassed
SILENCE = 10.0  # seconds without a frame during a command: the keeper is lost


class _NotStarted(Exception):
    """The keeper did not take the request: run it here."""


_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def connect(paths: KeeperPaths, timeout: float) -> socket.socket:
    """A connection to the keeper; OSError (no keeper: run cold) when the process listening
    there is not of our uid: our commands, their stdin and sudo passwords go to it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(paths.socket))
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        uid = _PEERCRED.unpack(raw)[1]
        if uid != os.getuid():
            raise ConnectionRefusedError(f"the keeper socket {paths.socket} is served by"
                                         f" uid {uid}, not by us")
    except BaseException:
        sock.close()
        raise
    return sock


def ping(paths: KeeperPaths, timeout: float = BUDGET) -> int | None:
    """The keeper's pid if one answers at `paths` within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    try:
        with connect(paths, timeout) as sock:
            protocol.send(sock, {"op": "hello", "v": protocol.VERSION})
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            header, _ = protocol.receive(sock)
    except (OSError, protocol.ProtocolError):
        return None
    if header.get("op") != "hello" or header.get("v") != protocol.VERSION:
        return None
    pid = header.get("pid")
    return pid if isinstance(pid, int) else None


def request(paths: KeeperPaths, op: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """One control request ("status", "stop"); None when no keeper answers."""
    try:
        with connect(paths, timeout) as sock:
            protocol.send(sock, {"op": op})
            header, _ = protocol.receive(sock)
    except (OSError, protocol.ProtocolError):
        return None
    return header


# -- values on the wire ------------------------------------------------------------------


def node_to_wire(node: Node) -> dict[str, Any]:
    """The node with its identity file made absolute here (`load_config` copies a relative
    `ssh.identity_file` into every node): the keeper's working directory is not ours."""
    data = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
    if data.get("identity_file"):
        data["identity_file"] = os.path.abspath(os.path.expanduser(data["identity_file"]))
    return data


def node_from_wire(data: dict[str, Any]) -> Node:
    return Node(**{**data, "roles": tuple(data.get("roles", ()))})


def encode_result(result: NodeResult[Any]) -> dict[str, Any]:
    """A plain command's NodeResult (no outcome: the keeper runs commands, not operations)."""
    return {"node": result.node, "exit_code": result.exit_code, "stdout": result.stdout,
            "stderr": result.stderr,
            "error_kind": result.error_kind.value if result.error_kind else None,
            "error": result.error, "duration": result.duration,
            "stdout_bytes": result.stdout_bytes, "stderr_bytes": result.stderr_bytes,
            "truncated": result.truncated}


def decode_result(data: dict[str, Any]) -> NodeResult[Any]:
    kind = data.get("error_kind")
    return NodeResult(node=data["node"], exit_code=data.get("exit_code"),
                      stdout=data.get("stdout", ""), stderr=data.get("stderr", ""),
                      error_kind=NodeErrorKind(kind) if kind else None,
                      error=data.get("error"), duration=float(data.get("duration", 0.0)),
                      stdout_bytes=int(data.get("stdout_bytes", 0)),
                      stderr_bytes=int(data.get("stderr_bytes", 0)),
                      truncated=bool(data.get("truncated", False)))


def ssh_to_wire(ssh: SSHSettings) -> dict[str, Any]:
    """The settings with their paths made absolute here: the keeper's working directory is
    not the command's."""
    data = {f.name: getattr(ssh, f.name) for f in dataclasses.fields(ssh)}
    for name in ("identity_file", "known_hosts"):
        if data.get(name):
            data[name] = os.path.abspath(os.path.expanduser(data[name]))
    return data


# -- the Runner ----------------------------------------------------------------------------


class KeeperRunner:
    """A `Runner` whose `run` and `session` (deploy's lock conversation) go through the
    keeper; `hold` (sync's leases) and anything the keeper cannot take use a Connector of
    this process, made on first need."""

    def __init__(self, ssh: SSHSettings, paths: KeeperPaths, *,
                 start: Callable[[], None] | None = None):
        self.settings = ssh
        self.paths = paths
        self._start = start  # starts a keeper (spawn) when none answers
        self._lock = threading.Lock()
        self._alive: bool | None = None
        self._replace = False  # no keeper answered: start one at `close`
        self._wire = ssh_to_wire(ssh)
        self._local: Connector | None = None

    @property
    def warm_mode(self) -> bool:
        """True when this command's runs go through a keeper (known after the first run)."""
        return bool(self._alive)

    def _keeper(self) -> bool:
        with self._lock:
            if self._alive is None:
                # The warm client (`thin`) found it wedged already: do not wait twice.
                self._alive = not thin.bypassed and ping(self.paths) is not None
                # Started when this command ends (`close`), not now: a keeper's start-up
                # (~0.1 s of CPU) would compete with this cold command's handshakes.
                self._replace = not self._alive
            return self._alive

    def _direct(self) -> Connector:
        with self._lock:
            if self._local is None:
                from skeleton_app.ssh.pool import Connector  # Paramiko only when needed

                self._local = Connector(self.settings)
            return self._local

    def run(self, node: Node, command: str, options: RunOptions | None = None
            ) -> NodeResult[Any]:
        from skeleton_app.ssh.runner import RunOptions

        options = options or RunOptions()
        if options.cancellable and TOKEN.cancelled:
            return failure(node.id, NodeErrorKind.INTERRUPTED, f"{INTERRUPTED} before it started")
        if self._keeper():
            try:
                return self._through_keeper(node, command, options)
            except _NotStarted:
                pass
        return self._direct().run(node, command, options)

    def _through_keeper(self, node: Node, command: str, options: RunOptions) -> NodeResult[Any]:
        started = time.monotonic()
        timeout = options.timeout
        if timeout is None and not options.unbounded:
            timeout = self.settings.op_timeout
        if options.stdin is not None and len(options.stdin) > protocol.MAX_PAYLOAD:
            raise _NotStarted  # more than the keeper takes in one frame
        header = {"op": "run", "ssh": self._wire, "node": node_to_wire(node),
                  "command": command, "timeout": timeout, "unbounded": options.unbounded,
                  "cancellable": options.cancellable, "stream": options.sink is not None,
                  "stdin": options.stdin is not None}
        try:
            sock = connect(self.paths, BUDGET)
        except OSError:
            raise _NotStarted from None
        with sock:
            try:
                protocol.send(sock, header, options.stdin or b"")
                sock.settimeout(SILENCE)
                reply, _ = protocol.receive(sock)
            except (OSError, protocol.ProtocolError):
                raise _NotStarted from None
            if reply["op"] != "started":
                raise _NotStarted
            return self._follow(sock, node, options, started)

    def _follow(self, sock: socket.socket, node: Node, options: RunOptions,
                started: float) -> NodeResult[Any]:
        """Read the command's frames to its result; a cancel (Ctrl-C) is passed on."""
        def on_cancel() -> None:
            with contextlib.suppress(OSError):
                protocol.send(sock, {"op": "cancel"})

        with TOKEN.on_cancel(on_cancel) if options.cancellable else contextlib.nullcontext():
            while True:
                try:
                    header, payload = protocol.receive(sock)
                except TimeoutError:
                    return self._lost(node, started, f"the connection keeper said nothing for"
                                      f" {SILENCE:g}s")
                except (OSError, protocol.ProtocolError) as exc:
                    return self._lost(node, started, f"the connection keeper went away ({exc})")
                op = header["op"]
                if op == "out" and options.sink is not None:
                    options.sink(node.id, str(header.get("stream")), payload)
                elif op == "result":
                    return decode_result(header["result"])

    def _lost(self, node: Node, started: float, why: str) -> NodeResult[Any]:
        with self._lock:
            self._alive = False  # the rest of this command runs here
            self._replace = True
        return failure(node.id, NodeErrorKind.LOST,
                       f"{why} mid-command; the command may have run",
                       time.monotonic() - started)

    # -- the rest of the Runner protocol: this process's own connections ------------------

    def session(self, node: Node, command: str, *, what: str = "helper") -> Session:
        """A line conversation (deploy's lock) on the keeper's connection (`lines`)."""
        if self._keeper():
            try:
                return self._session_through_keeper(node, command, what)
            except _NotStarted:
                pass
        return self._direct().session(node, command, what=what)

    def _session_through_keeper(self, node: Node, command: str, what: str) -> Session:
        from skeleton_app.keeper.lines import KeeperSession

        header = {"op": "session", "ssh": self._wire, "node": node_to_wire(node),
                  "command": command, "what": what}
        try:
            sock = connect(self.paths, BUDGET)
        except OSError:
            raise _NotStarted from None
        try:
            protocol.send(sock, header)
            # The keeper may have to connect (twice, if a held connection proved dead).
            sock.settimeout(2 * self.settings.connect_timeout + SILENCE)
            reply, _ = protocol.receive(sock)
        except (OSError, protocol.ProtocolError):
            # Nothing talked to the command yet: if the keeper opened it, its end closed it.
            sock.close()
            raise _NotStarted from None
        if reply["op"] == "opened":
            return KeeperSession(sock, node, what=what)
        sock.close()
        if reply["op"] == "failed":
            raise NodeError(NodeErrorKind(reply["kind"]), str(reply["message"]), node=node.id)
        raise _NotStarted

    def hold(self, node: Node, command: str, *, cancellable: bool = True) -> Callable[[], None]:
        return self._direct().hold(node, command, cancellable=cancellable)

    def warm(self, nodes: Iterable[Node]) -> Callable[[], None]:
        """Connect ahead: the keeper's connections are warm already (or it connects on the
        first request); without a keeper, this process's own connector warms up."""
        if self._keeper():
            return lambda: None
        return self._direct().warm(nodes)

    def discard(self, node: Node) -> None:
        if self._local is not None:
            self._local.discard(node)

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
        with self._lock:
            start, self._replace = self._replace, False
        if start and self._start is not None:
            self._start()


def keeper_runner(ssh: SSHSettings, *, warn: Callable[[str], None]) -> KeeperRunner | None:
    """The Runner of a CLI command in warm mode; None when `ssh.persist` is 0 or the
    keeper's directory is unsafe (said once through `warn`: the command runs cold)."""
    from skeleton_app.keeper import spawn
    from skeleton_app.keeper.paths import KeeperPathError, keeper_paths

    if ssh.persist <= 0:
        return None
    try:
        paths = keeper_paths()
    except (KeeperPathError, OSError) as exc:
        warn(f"skeleton: warning: warm mode off: {exc}")
        return None
    return KeeperRunner(ssh, paths, start=lambda: spawn.start_at_exit(paths, ssh.persist))
