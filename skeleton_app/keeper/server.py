"""The keeper process: holds pooled SSH connections and runs commands on them for its user.

`python -m skeleton_app.keeper serve` (started by `spawn`). It listens on a Unix socket
(mode 0600, in the 0700 directory of `paths`) and serves one request per connection:

- every accepted connection's peer is checked with SO_PEERCRED: another uid is refused
  (root can open our socket whatever its mode);
- connections are grouped by what matters for making one (`ConnectionKey`: the resolved
  ssh settings, the identity file as a file (path, inode, mtime, size), known_hosts and
  ~/.ssh/config by content digest): a config change never reuses a connection made under
  the old one, it opens a new one beside it and the old one expires;
- a connection unused for `ssh.persist` seconds (the persist of the last command that used
  it) is closed, with one log line for every connection opened or closed;
- each request waits on a cancel token of its own (`cancel.scoped`): a client that sends
  "cancel" (Ctrl-C) or goes away stops its own commands on the nodes, nobody else's;
- the keeper exits when it holds no connection and nobody asked it anything for `persist`
  seconds, on `stop`, or when another keeper took its socket (a wedged one was replaced).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skeleton_app import cancel
from skeleton_app.config import SSHSettings
from skeleton_app.keeper import protocol
from skeleton_app.keeper.client import encode_result, node_from_wire, ping
from skeleton_app.keeper.paths import KeeperPaths
from skeleton_app.nodes import Node
from skeleton_app.results import NodeResult
from skeleton_app.ssh.pool import Connector
from skeleton_app.ssh.runner import RunOptions

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_REAP_EVERY = 0.5  # seconds between idle checks

# The resolved settings plus the files behind them, as facts (see module docstring).
ConnectionKey = tuple[Any, ...]
_NodeKey = tuple[str, str, str, int]


def _file_fact(path: str | None) -> tuple[Any, ...] | None:
    """A file as (path, inode, mtime, size): a key replaced or rewritten in place is new."""
    if not path:
        return None
    full = os.path.expanduser(path)
    try:
        st = os.stat(full)
    except OSError:
        return (full, None)
    return (full, st.st_ino, st.st_mtime_ns, st.st_size)


class _Digests:
    """Content digests of small files (known_hosts, ~/.ssh/config), cached by stat."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[Any, ...] | None, str]] = {}

    def digest(self, path: str) -> str:
        full = os.path.expanduser(path)
        fact = _file_fact(full)
        with self._lock:
            cached = self._cache.get(full)
            if cached is not None and cached[0] == fact and fact is not None and fact[1]:
                return cached[1]
        try:
            value = hashlib.sha256(Path(full).read_bytes()).hexdigest()
        except OSError:
            value = "absent"
        with self._lock:
            self._cache[full] = (fact, value)
        return value


def connection_key(ssh: SSHSettings, node: Node, digests: _Digests) -> ConnectionKey:
    """What a connection to `node` under `ssh` depends on. The command's own limits
    (command_timeout, fanout, persist) are left out: they do not change a connection."""
    connecting = dataclasses.replace(ssh, command_timeout=None, fanout=1, persist=0.0)
    return (
        dataclasses.astuple(connecting),
        (node.id, node.user, node.host, node.port),
        _file_fact(node.identity_file or ssh.identity_file),
        digests.digest(ssh.known_hosts),
        digests.digest("~/.ssh/config") if ssh.ssh_config else None,
    )


@dataclass(slots=True)
class _Held:
    """One node's connection as the keeper tracks it."""

    connector: Connector
    node: Node
    persist: float
    last_used: float
    busy: int = 0
    link: object | None = None  # the pooled link we last saw (identity, for the log)


class Keeper:
    """The server: a listening socket, the held connections, the reaper. One per user."""

    def __init__(self, paths: KeeperPaths, *, persist: float, log: Callable[[str], None]):
        self.paths = paths
        self.persist = persist
        self._log = log
        self._lock = threading.Lock()
        self._held: dict[ConnectionKey, _Held] = {}
        self._digests = _Digests()
        self._active = 0  # requests in progress
        self._last_activity = time.monotonic()
        self._started = time.time()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._inode: int | None = None

    # -- life cycle -------------------------------------------------------------------

    def bind(self) -> bool:
        """Take the socket (under the lock file, so two keepers starting together agree on
        one). False when a live keeper already answers there: this one is not needed."""
        with open(self.paths.lock, "a+b") as lock:
            os.fchmod(lock.fileno(), 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX)
            # Generous here (the client's budget is 100 ms): replacing a keeper that was
            # merely slow under load would cut its commands' connections.
            if ping(self.paths, timeout=0.5) is not None:
                return False
            with contextlib.suppress(FileNotFoundError):
                self.paths.socket.unlink()
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)  # 0600 from the start, no window with a wider mode
            try:
                listener.bind(str(self.paths.socket))
            finally:
                os.umask(old)
            listener.listen(256)
            listener.settimeout(_REAP_EVERY)
            self._listener = listener
            self._inode = os.stat(self.paths.socket).st_ino
            tmp = self.paths.pid.with_suffix(".pid.tmp")
            tmp.write_text(f"{os.getpid()}\n")
            tmp.replace(self.paths.pid)
        self._log(f"listening on {self.paths.socket} (persist {self.persist:g}s)")
        return True

    def serve(self) -> None:
        """Accept until it is time to go (see the module docstring), then close everything."""
        assert self._listener is not None
        reaper = threading.Thread(target=self._reap_loop, daemon=True, name="reaper")
        reaper.start()
        try:
            while not self._stop.is_set():
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stop.is_set():
                        break
                    raise
                with self._lock:
                    self._active += 1
                    self._last_activity = time.monotonic()
                threading.Thread(target=self._serve_one, args=(conn,), daemon=True,
                                 name="request").start()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._socket_is_ours():
            with contextlib.suppress(OSError):
                self.paths.socket.unlink()
            with contextlib.suppress(OSError):
                if self.paths.pid.read_text().strip() == str(os.getpid()):
                    self.paths.pid.unlink()
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
        for h in held:
            self._closed(h, "keeper exiting")
        for connector in {id(h.connector): h.connector for h in held}.values():
            connector.close()
        self._log("exited")

    def _socket_is_ours(self) -> bool:
        try:
            return os.stat(self.paths.socket).st_ino == self._inode
        except OSError:
            return False

    # -- the held connections -----------------------------------------------------------

    def _reap_loop(self) -> None:
        while not self._stop.wait(_REAP_EVERY):
            self._reap()

    def _reap(self) -> None:
        """Close what is idle past its persist or dead; decide whether to exit."""
        now = time.monotonic()
        closing: list[tuple[ConnectionKey, _Held, str]] = []
        with self._lock:
            for key, h in list(self._held.items()):
                if h.busy:
                    continue
                link = h.connector.pooled(h.node)
                if link is None or not getattr(link, "is_connected", False):
                    closing.append((key, h, "lost"))
                elif now - h.last_used >= h.persist:
                    closing.append((key, h, f"idle {now - h.last_used:.0f}s"))
            for key, _, _ in closing:
                del self._held[key]
            empty = not self._held and not self._active
            idle_for = now - self._last_activity
        for _, h, why in closing:
            self._drop(h, why)
        if not self._socket_is_ours():
            self._log("another keeper took the socket: exiting")
            self._stop.set()
        elif empty and idle_for >= self.persist:
            self._log("nothing held: exiting")
            self._stop.set()
        if self._stop.is_set() and self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)

    def _drop(self, h: _Held, why: str) -> None:
        """Close `h`'s connection and its connector (one per key, and a key names one
        node: a Connector's pool is keyed by node address only, not by identity file)."""
        h.connector.discard(h.node)
        self._closed(h, why)
        h.connector.close()

    def _closed(self, h: _Held, why: str) -> None:
        if h.link is not None:
            self._log(f"closed {self._name(h.node)} ({why})")
            h.link = None

    @staticmethod
    def _name(node: Node) -> str:
        return f"{node.id} ({node.user}@{node.host}:{node.port})"

    def _checkout(self, ssh: SSHSettings, node: Node) -> tuple[ConnectionKey, _Held]:
        key = connection_key(ssh, node, self._digests)
        with self._lock:
            h = self._held.get(key)
            if h is None:
                h = self._held[key] = _Held(Connector(ssh), node, ssh.persist,
                                            time.monotonic())
            h.busy += 1
            h.persist = ssh.persist
            return key, h

    def _checkin(self, h: _Held) -> None:
        link = h.connector.pooled(h.node)
        with self._lock:
            h.busy -= 1
            h.last_used = time.monotonic()
            previous, h.link = h.link, link
        if link is previous:
            return
        if previous is not None:
            self._log(f"closed {self._name(h.node)} (broken; reconnecting)" if link
                      else f"closed {self._name(h.node)} (broken)")
        if link is not None:
            self._log(f"opened {self._name(h.node)}")

    # -- requests -------------------------------------------------------------------------

    def _serve_one(self, conn: socket.socket) -> None:
        try:
            with conn:
                raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                pid, uid, _ = _PEERCRED.unpack(raw)
                if uid != os.getuid():
                    self._log(f"refused a connection from uid {uid} (pid {pid})")
                    return
                conn.settimeout(30.0)  # a client that connects and says nothing
                while True:
                    try:
                        header, payload = protocol.receive(conn)
                    except (protocol.ProtocolError, OSError):
                        return
                    if not self._answer(conn, header, payload):
                        return
        finally:
            with self._lock:
                self._active -= 1
                self._last_activity = time.monotonic()

    def _answer(self, conn: socket.socket, header: dict[str, Any], payload: bytes) -> bool:
        """Answer one frame; False when the conversation is over."""
        op = header["op"]
        if op == "hello":
            protocol.send(conn, {"op": "hello", "pid": os.getpid(), "v": protocol.VERSION})
            return True
        if op == "run":
            self._run(conn, header, payload)
            return False
        if op == "status":
            protocol.send(conn, self.status())
            return True
        if op == "stop":
            protocol.send(conn, {"op": "stopping", "pid": os.getpid()})
            self._log("stop requested")
            self._stop.set()
            if self._listener is not None:
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
            return False
        protocol.send(conn, {"op": "error", "message": f"unknown op {op!r}"})
        return False

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            held = [{"node": h.node.id, "user": h.node.user, "host": h.node.host,
                     "port": h.node.port, "idle": round(now - h.last_used, 1),
                     "busy": h.busy, "persist": h.persist}
                    for h in self._held.values() if h.link is not None or h.busy]
            active = self._active - 1  # not counting the status request itself
        return {"op": "status", "pid": os.getpid(), "started": self._started,
                "persist": self.persist, "socket": str(self.paths.socket),
                "connections": held, "requests": active, "threads": threading.active_count(),
                "fds": _count_fds()}

    def _run(self, conn: socket.socket, header: dict[str, Any], payload: bytes) -> None:
        try:
            ssh = SSHSettings(**header["ssh"])
            node = node_from_wire(header["node"])
            command = str(header["command"])
        except (KeyError, TypeError, ValueError) as exc:
            # A client of another version: it runs the command itself.
            protocol.send(conn, {"op": "error", "message": f"bad run request: {exc}"})
            return
        protocol.send(conn, {"op": "started"})  # from here on the command is ours to run
        sending = threading.Lock()
        gone = threading.Event()

        def send(head: dict[str, Any], data: bytes = b"") -> None:
            if gone.is_set():
                return
            with sending:
                try:
                    protocol.send(conn, head, data)
                except OSError:
                    gone.set()

        def sink(_node: str, stream: str, chunk: bytes) -> None:
            send({"op": "out", "stream": stream}, chunk)

        options = RunOptions(timeout=header.get("timeout"),
                             stdin=payload if header.get("stdin") else None,
                             sink=sink if header.get("stream") else None,
                             cancellable=bool(header.get("cancellable", True)),
                             unbounded=bool(header.get("unbounded", False)))
        token = cancel.CancelToken()
        done = threading.Event()
        _, held = self._checkout(ssh, node)

        def work() -> None:
            try:
                with cancel.scoped(token):
                    result: NodeResult[Any] = held.connector.run(node, command, options)
            except Exception as exc:  # a bug must still answer the client
                from skeleton_app.errors import NodeErrorKind
                from skeleton_app.results import failure

                result = failure(node.id, NodeErrorKind.ERROR, f"keeper: {exc!r}")
            finally:
                self._checkin(held)
            send({"op": "result", "result": encode_result(result)})
            done.set()

        worker = threading.Thread(target=work, daemon=True, name=f"run-{node.id}")
        worker.start()
        try:
            while not done.is_set():
                readable = select.select([conn], [], [], protocol.TICK)[0]
                if readable and not gone.is_set():
                    try:
                        conn.settimeout(protocol.TICK)
                        head, _ = protocol.receive(conn)
                        if head["op"] == "cancel":
                            token.cancel()
                    except (protocol.ProtocolError, OSError):
                        gone.set()  # the client went away (killed, Ctrl-C twice): stop
                        token.cancel()
                elif gone.is_set():
                    done.wait(protocol.TICK)
                if not done.is_set():
                    send({"op": "tick"})
        finally:
            worker.join()
            token.close()


def _count_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def main(paths: KeeperPaths, persist: float) -> int:
    """Run a keeper at `paths` until it is time to go; 0 also when another one serves."""
    def log(line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"{stamp} keeper[{os.getpid()}]: {line}\n")
            sys.stderr.flush()

    keeper = Keeper(paths, persist=persist, log=log)
    if not keeper.bind():
        return 0
    keeper.serve()
    return 0
