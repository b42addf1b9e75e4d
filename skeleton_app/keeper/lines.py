"""A line conversation (`Runner.session`: deploy's lock) through the keeper.

The keeper opens the command's channel on its held connection (`Connector.session`: the
same reconnect and error translation) and relays bytes, nothing more:

    client -> {"op": "session", ...}           keeper -> {"op": "opened"} or {"op": "failed"}
    client -> {"op": "stdin"} + bytes          keeper -> {"op": "out", "stream": ...} + bytes
    client -> {"op": "close"}                  keeper -> {"op": "eof"} / {"op": "closed"}

The line logic (timeouts, Ctrl-C, "exited early") stays on the client, in `KeeperSession`,
with `ssh.session.LineSession`'s line logic (`LineReader`). A client that goes away closes the
command's stdin, as its own process dying would: deploy.sh then drops its lock.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.keeper import protocol
from skeleton_app.nodes import Node
from skeleton_app.ssh.session import LineReader

Send = Callable[..., None]  # (header, payload=b"") -> None, thread-safe


class KeeperSession(LineReader):
    """The client's side: a `Session` over a keeper connection (see module docstring)."""

    def __init__(self, sock: socket.socket, node: Node, *, what: str):
        self.sock = sock
        self.node = node
        self.what = what
        self._buf = b""
        self._err = b""
        self._eof = False
        self._gone = False

    def _lost(self, exc: BaseException) -> NodeError:
        self._gone = True
        return NodeError(NodeErrorKind.LOST, f"the connection keeper went away ({exc})",
                         node=self.node.id)

    def _fill(self, wait: float) -> None:
        """Take one frame (waiting up to `wait` seconds)."""
        self.sock.settimeout(wait)
        try:
            header, payload = protocol.receive(self.sock)
        except TimeoutError:
            return
        except (OSError, protocol.ProtocolError) as exc:
            raise self._lost(exc) from None
        op = header["op"]
        if op == "out" and header.get("stream") == "stdout":
            self._buf += payload
        elif op == "out":
            self._err = (self._err + payload)[-4096:]
        elif op == "eof":
            self._eof = True

    def send(self, lines: Sequence[str]) -> None:
        try:
            protocol.send(self.sock, {"op": "stdin"},
                          "".join(f"{line}\n" for line in lines).encode())
        except OSError as exc:
            raise self._lost(exc) from None

    def stderr_tail(self) -> str:
        with contextlib.suppress(NodeError):
            self._fill(0.0)
        text = self._err.decode("utf-8", "replace").strip()
        return ": " + text.splitlines()[-1] if text else ""

    def close(self) -> None:
        """Close the command's stdin and wait (up to ~5 s, as LineSession) for it to end."""
        with contextlib.suppress(OSError, protocol.ProtocolError):
            if not self._gone:
                protocol.send(self.sock, {"op": "close"})
                self.sock.settimeout(6.0)
                while protocol.receive(self.sock)[0]["op"] != "closed":
                    pass
        self.sock.close()


def relay(conn: socket.socket, session: Any, send: Send) -> None:
    """The keeper's side: pass bytes between the client (`conn`) and the channel of
    `session` (a `ssh.session.LineSession`) until the client closes it or goes away."""
    channel = session.channel
    done = threading.Event()

    def pump() -> None:
        fd = channel.fileno()
        while not done.is_set():
            got = False
            while channel.recv_ready():
                data = channel.recv(65536)
                if not data:
                    break
                got = True
                send({"op": "out", "stream": "stdout"}, data)
            while channel.recv_stderr_ready():
                data = channel.recv_stderr(65536)
                if not data:
                    break
                got = True
                send({"op": "out", "stream": "stderr"}, data)
            if channel.eof_received and not (channel.recv_ready()
                                             or channel.recv_stderr_ready()):
                send({"op": "eof"})
                return
            if not got:
                select.select([fd], [], [], 0.25)

    reader = threading.Thread(target=pump, daemon=True, name=f"session-{session.node.id}")
    reader.start()
    try:
        conn.settimeout(None)
        while True:
            try:
                header, payload = protocol.receive(conn)
            except (OSError, protocol.ProtocolError):
                return  # the client went away: close stdin below, as its death would
            if header["op"] == "stdin":
                try:
                    channel.sendall(payload)
                except Exception:  # the channel broke: the client reads the EOF
                    continue
            elif header["op"] == "close":
                session.close()
                done.set()
                reader.join(5)
                send({"op": "closed"})
                return
    finally:
        done.set()
        session.close()
