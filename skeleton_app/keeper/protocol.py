"""The keeper's wire format: frames over a Unix stream socket.

    frame = !II (header length, payload length) + header (UTF-8 JSON object) + payload

The header says what the frame is (`op`); the payload carries bytes as they are (a command's
stdin, an output chunk), never base64. Standard library only: the client's fast path loads
this module.

A conversation (one connection per command on one node, or per control request):

    client -> {"op": "hello", "v": 1}            keeper -> {"op": "hello", "pid": N}
    client -> {"op": "run", ...} + stdin         keeper -> {"op": "out", "stream": ...} + chunk
    client -> {"op": "cancel"} (Ctrl-C)          keeper -> {"op": "tick"} (every TICK seconds)
                                                 keeper -> {"op": "result", "result": {...}}
    client -> {"op": "status"}                   keeper -> {"op": "status", ...}
    client -> {"op": "stop"}                     keeper -> {"op": "stopping"}
"""

from __future__ import annotations

import json
import socket
import struct

TYPE_CHECKING = False  # not typing's: the warm client (`thin`) loads this module
if TYPE_CHECKING:
    from typing import Any

VERSION = 1
TICK = 1.0  # seconds between the keeper's "still running" frames during a command
_HEAD = struct.Struct("!II")
MAX_HEADER = 1 << 20
# The largest payload is a command's stdin: exec --stdin's 64 MiB plus sudo's lines, a job's
# 64 MiB input file in base64 (~88 MiB). A frame announcing more is refused before it is
# read (each one is held whole in the keeper's memory); a client with more stdin than this
# runs that command itself (client.KeeperRunner).
MAX_PAYLOAD = 128 << 20

Frame = tuple["dict[str, Any]", bytes]


class ProtocolError(Exception):
    """The peer closed the connection or sent something that is not a frame."""


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _HEAD.pack(len(head), len(payload)) + head + payload


def send(sock: socket.socket, header: dict[str, Any], payload: bytes = b"") -> None:
    sock.sendall(encode(header, payload))


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ProtocolError("connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket) -> Frame:
    """The next frame; ProtocolError at EOF or on garbage; socket.timeout per the socket."""
    head_len, payload_len = _HEAD.unpack(_exactly(sock, _HEAD.size))
    if head_len > MAX_HEADER or payload_len > MAX_PAYLOAD:
        raise ProtocolError(f"frame too large ({head_len}, {payload_len})")
    try:
        header = json.loads(_exactly(sock, head_len))
    except ValueError as exc:
        raise ProtocolError(f"bad frame header: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("op"), str):
        raise ProtocolError("bad frame header: no op")
    return header, _exactly(sock, payload_len) if payload_len else b""
