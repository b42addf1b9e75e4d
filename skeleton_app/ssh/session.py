"""A line conversation with a command on one node, over a channel that the pool opened
(`Connector.session`, which reconnects and translates errors as `Connector.run` does)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

from skeleton_app import cancel
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.nodes import Node


class LineReader:
    """`read_line` and `request` over bytes that `_fill` brings in: the one line logic
    (timeouts, Ctrl-C, "exited early") of a conversation over a channel (`LineSession`) and
    through the connection keeper (`keeper.lines.KeeperSession`)."""

    node: Node
    what: str  # how errors name the command: "the node's deploy helper exited"
    _buf: bytes
    _eof: bool

    def _fill(self, wait: float) -> None:
        """Add what arrives within `wait` seconds to `_buf` (or set `_eof`); NodeError(LOST)
        when the link is gone."""
        raise NotImplementedError

    def send(self, lines: Sequence[str]) -> None:
        raise NotImplementedError

    def stderr_tail(self) -> str:
        raise NotImplementedError

    def read_line(self, timeout: float, *, cancellable: bool = True) -> str | None:
        """The next line, None at EOF; NodeError(TIMEOUT/LOST) when none comes in time,
        NodeError(INTERRUPTED) on a cancel (unless `cancellable` is false)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if cancellable and cancel.token().cancelled:
                raise NodeError(NodeErrorKind.INTERRUPTED, f"{cancel.INTERRUPTED} before any"
                                f" change (waiting for the node's {self.what})",
                                node=self.node.id)
            if self._eof:
                if self._buf:
                    line, self._buf = self._buf, b""
                    return line.decode("utf-8", "replace")
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise NodeError(NodeErrorKind.TIMEOUT,
                                f"the node's {self.what} did not answer within {timeout:g}s",
                                node=self.node.id)
            self._fill(min(left, 0.25))  # a cancel is seen within 0.25 s
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("utf-8", "replace")

    def request(self, lines: Sequence[str], timeout: float, *, cancellable: bool = True) -> str:
        self.send(lines)
        reply = self.read_line(timeout, cancellable=cancellable)
        if reply is None:
            raise NodeError(NodeErrorKind.LOST, f"the node's {self.what} exited early"
                            + self.stderr_tail(), node=self.node.id)
        return reply


class LineSession(LineReader):
    """A command on one node over one channel whose stdin stays open: a line conversation.

    `Connector.run` is request/response (stdin is sent whole, then closed); deploy's lock must
    live exactly as long as the deploy, so deploy.sh talks over one of these.
    """

    def __init__(self, channel: Any, node: Node, *, what: str = "helper"):
        self.channel = channel  # a paramiko Channel on which the command was started
        self.node = node
        self.what = what  # how errors name the command: "the node's deploy helper exited"
        self._buf = b""
        self._eof = False

    def _fill(self, wait: float) -> None:
        self.channel.settimeout(wait)
        try:
            data = self.channel.recv(4096)
        except TimeoutError:
            return
        except Exception as exc:
            raise NodeError(NodeErrorKind.LOST, f"connection lost: {exc}",
                            node=self.node.id) from exc
        if not data:
            self._eof = True
        self._buf += data

    def send(self, lines: Sequence[str]) -> None:
        try:
            self.channel.sendall(("".join(f"{line}\n" for line in lines)).encode())
        except Exception as exc:
            raise NodeError(NodeErrorKind.LOST, f"connection lost: {exc}",
                            node=self.node.id) from exc

    def stderr_tail(self) -> str:
        with contextlib.suppress(Exception):
            if self.channel.recv_stderr_ready():
                text = self.channel.recv_stderr(4096).decode("utf-8", "replace").strip()
                if text:
                    return ": " + str(text.splitlines()[-1])
        return ""

    def close(self) -> None:
        """Close stdin (deploy.sh exits, the lock goes), wait briefly for that, close."""
        with contextlib.suppress(Exception):
            self.channel.shutdown_write()
            deadline = time.monotonic() + 5
            while not self.channel.exit_status_ready() and time.monotonic() < deadline:
                time.sleep(0.005)
        with contextlib.suppress(Exception):
            self.channel.close()
