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

import _json
import struct

TYPE_CHECKING = False  # not typing's: the warm client (`thin`) loads this module
if TYPE_CHECKING:
    from _socket import socket  # socket.socket's base: the warm client's raw sockets too
    from typing import Any, ClassVar

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


# JSON through CPython's C accelerator, as `json.dumps(separators=(",", ":"))` and
# `json.loads` use it, without the `json` package: its decoder module imports `re` (with
# `enum`), ~5 ms of every warm command's start (`thin`). Strict: no whitespace around.
class _Scanning:
    strict = True
    object_hook = object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"),
                      "-Infinity": float("-inf")}.__getitem__
    memo: ClassVar[dict[str, str]] = {}


def _unserializable(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# (typeshed types the scanner's context as the scanner itself: any object with these fields)
_scan = _json.make_scanner(_Scanning())  # type: ignore[arg-type]
_encode = _json.make_encoder(None, _unserializable, _json.encode_basestring_ascii, None, ":",
                             ",", False, False, True)


def dumps(value: Any) -> str:
    """`value` as compact JSON (ASCII, as json.dumps writes it)."""
    return "".join(_encode(value, 0))


def loads(text: str) -> Any:
    """The JSON value `text` holds, and nothing after it; ValueError otherwise."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if end != len(text):
        raise ValueError(f"extra data at {end}")
    return value


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = dumps(header).encode()
    return _HEAD.pack(len(head), len(payload)) + head + payload


def send(sock: socket, header: dict[str, Any], payload: bytes = b"") -> None:
    sock.sendall(encode(header, payload))


def _exactly(sock: socket, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ProtocolError("connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket) -> Frame:
    """The next frame; ProtocolError at EOF or on garbage; socket.timeout per the socket."""
    head_len, payload_len = _HEAD.unpack(_exactly(sock, _HEAD.size))
    if head_len > MAX_HEADER or payload_len > MAX_PAYLOAD:
        raise ProtocolError(f"frame too large ({head_len}, {payload_len})")
    try:
        header = loads(_exactly(sock, head_len).decode())
    except ValueError as exc:
        raise ProtocolError(f"bad frame header: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("op"), str):
        raise ProtocolError("bad frame header: no op")
    return header, _exactly(sock, payload_len) if payload_len else b""
