"""The keeper process: holds pooled SSH connections and runs commands on them for its user.

`python -m skeleton_app.keeper serve` (started by `spawn`). It listens on a Unix socket
(mode 0600, in the 0700 directory of `paths`) and serves one request per connection:

- every accepted connection's peer is checked with SO_PEERCRED: another uid is refused
  (root can open our socket whatever its mode);
- connections are held by what matters for making one (`held.connection_key`: the
  resolved ssh settings, the identity file as a file, known_hosts and ~/.ssh/config by
  content): a config change never reuses a connection made under the old one, it opens a
  new one beside it and the old one expires;
- requests: `run` (a command to its end, output streamed back) and `session` (a line
  conversation, deploy's lock: `lines.relay`), plus `hello`, `status` and `stop`;
- a connection unused for `ssh.persist` seconds (the persist of the last command that used
  it) is closed, with one log line for every connection opened or closed;
- each request waits on a cancel token of its own (`cancel.scoped`): a client that sends
  "cancel" (Ctrl-C) or goes away stops its own commands on the nodes, nobody else's;
- the keeper exits when it holds no connection and nobody asked it anything for `persist`
  seconds, on `stop`, or when another keeper took its socket (a wedged one was replaced).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from skeleton_app import cancel
from skeleton_app.config import SSHSettings
from skeleton_app.errors import ExitCode, NodeError
from skeleton_app.keeper import protocol
from skeleton_app.keeper.client import encode_result, node_from_wire, ping
from skeleton_app.keeper.held import HeldConnections
from skeleton_app.keeper.lines import relay
from skeleton_app.keeper.paths import KeeperPaths
from skeleton_app.keeper.served import Answer, Declined, ExecService
from skeleton_app.results import NodeResult
from skeleton_app.ssh.runner import RunOptions

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_REAP_EVERY = 0.5  # seconds between idle checks
_CHUNK = 1 << 20  # bytes of a served command's output per frame


class Keeper:
    """The server: a listening socket, the held connections, the reaper. One per user.
    (~270 lines: its life cycle and its four requests share the activity count and the
    stop flag; split, they would pass them around.)"""

    def __init__(self, paths: KeeperPaths, *, persist: float, log: Callable[[str], None]):
        self.paths = paths
        self.persist = persist
        self._log = log
        self._lock = threading.Lock()
        self.held = HeldConnections(log)
        self.served = ExecService(self.held)
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
        self.held.close("keeper exiting")
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
        nothing_held = self.held.expire()
        with self._lock:
            empty = nothing_held and not self._active
            idle_for = time.monotonic() - self._last_activity
        if not self._socket_is_ours():
            self._log("another keeper took the socket: exiting")
            self._stop.set()
        elif self.served.outdated and not self._active:
            self._log("skeleton_app changed on disk: exiting (the next command starts anew)")
            self._stop.set()
        elif empty and idle_for >= self.persist:
            self._log("nothing held: exiting")
            self._stop.set()
        if self._stop.is_set() and self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)

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
        if op == "exec":
            self._exec(conn, header)
            return False
        if op == "session":
            self._session(conn, header)
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
        held = self.held.listing()
        with self._lock:
            active = self._active - 1  # not counting the status request itself
        return {"op": "status", "pid": os.getpid(), "started": self._started,
                "persist": self.persist, "socket": str(self.paths.socket),
                "connections": held, "requests": active, "threads": threading.active_count(),
                "fds": _count_fds(), "served": self.served.served,
                "declined": self.served.declined, "last_declined": self.served.last_declined}

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
        send = _Sender(conn)

        def sink(_node: str, stream: str, chunk: bytes) -> None:
            send({"op": "out", "stream": stream}, chunk)

        options = RunOptions(timeout=header.get("timeout"),
                             stdin=payload if header.get("stdin") else None,
                             sink=sink if header.get("stream") else None,
                             cancellable=bool(header.get("cancellable", True)),
                             unbounded=bool(header.get("unbounded", False)))
        token = cancel.CancelToken()
        done = threading.Event()
        held = self.held.checkout(ssh, node)

        def work() -> None:
            try:
                with cancel.scoped(token):
                    result: NodeResult[Any] = held.connector.run(node, command, options)
            except Exception as exc:  # a bug must still answer the client
                from skeleton_app.errors import NodeErrorKind
                from skeleton_app.results import failure

                result = failure(node.id, NodeErrorKind.ERROR, f"keeper: {exc!r}")
            finally:
                self.held.checkin(held)
            send({"op": "result", "result": encode_result(result)})
            done.set()

        _watch(conn, threading.Thread(target=work, daemon=True, name=f"run-{node.id}"),
               token, done, send)

    def _exec(self, conn: socket.socket, header: dict[str, Any]) -> None:
        """A whole `cluster exec` (`served`): "taking" at once (the client's 100 ms budget
        covers only that), then "declined" or "started", ticks, the output, "done"."""
        protocol.send(conn, {"op": "taking"})
        try:
            served = self.served.prepare(header)
        except Declined as exc:
            protocol.send(conn, {"op": "declined", "why": str(exc)})
            return
        protocol.send(conn, {"op": "started", "nodes": [n.id for n in served.nodes],
                             "persist": served.persist})
        send = _Sender(conn)

        token = cancel.CancelToken()
        done = threading.Event()

        def work() -> None:
            try:
                answer = self.served.run(served, token)
            except Exception as exc:  # a bug must still answer the client
                answer = Answer(int(ExitCode.FAILED), "", f"skeleton: error: keeper: {exc!r}\n")
            out = answer.stdout.encode("utf-8", "surrogateescape")
            for start in range(0, len(out), _CHUNK):
                send({"op": "out", "stream": "stdout"}, out[start:start + _CHUNK])
            send({"op": "done", "code": answer.code, "stderr": answer.stderr})
            done.set()

        _watch(conn, threading.Thread(target=work, daemon=True, name="exec"),
               token, done, send)


    def _session(self, conn: socket.socket, header: dict[str, Any]) -> None:
        """A line conversation (deploy's lock) on the held connection: `lines.relay`."""
        try:
            ssh = SSHSettings(**header["ssh"])
            node = node_from_wire(header["node"])
            command, what = str(header["command"]), str(header["what"])
        except (KeyError, TypeError, ValueError) as exc:
            protocol.send(conn, {"op": "error", "message": f"bad session request: {exc}"})
            return
        held = self.held.checkout(ssh, node)
        try:
            try:
                session = held.connector.session(node, command, what=what)
            except NodeError as exc:
                protocol.send(conn, {"op": "failed", "kind": exc.kind.value,
                                     "message": exc.message})
                return
            sending = threading.Lock()

            def send(head: dict[str, Any], data: bytes = b"") -> None:
                with sending, contextlib.suppress(OSError):
                    protocol.send(conn, head, data)

            send({"op": "opened"})
            relay(conn, session, send)
        finally:
            self.held.checkin(held)


class _Sender:
    """Frames to one client from several threads; after a failed send, none (`gone`)."""

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.gone = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, head: dict[str, Any], data: bytes = b"") -> None:
        if self.gone.is_set():
            return
        with self._lock:
            try:
                protocol.send(self.conn, head, data)
            except OSError:
                self.gone.set()


def _watch(conn: socket.socket, worker: threading.Thread, token: cancel.CancelToken,
           done: threading.Event, send: _Sender) -> None:
    """Run `worker` to its end: pass the client's "cancel" (Ctrl-C) to `token`, cancel when
    the client goes away (killed, Ctrl-C twice), say "tick" every TICK meanwhile."""
    worker.start()
    try:
        while not done.is_set():
            readable = select.select([conn], [], [], protocol.TICK)[0]
            if readable and not send.gone.is_set():
                try:
                    conn.settimeout(protocol.TICK)
                    head, _ = protocol.receive(conn)
                    if head["op"] == "cancel":
                        token.cancel()
                except (protocol.ProtocolError, OSError):
                    send.gone.set()
                    token.cancel()
            elif send.gone.is_set():
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
