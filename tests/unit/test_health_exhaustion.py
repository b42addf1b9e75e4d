"""The daemon's /health and /metrics server under a flood (security review of issue #16):
it may face the network, so idle connections past the cap are closed at once and a trickled
request is cut at its deadline; /health answers again when the flood stops."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator

import pytest

from skeleton_app.agent import health


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(health, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(health, "REQUEST_DEADLINE", 0.5)
    server, _ = health.serve("127.0.0.1", 0, token="t" * 24,
                             report=lambda authorized: {"status": "ok"})
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _health(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_trickled_request_is_cut_and_a_flood_past_the_cap_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"GET /health HTTP/1.0\r\n")  # and never the blank line
        assert _closed_within(slow, 5)
    time.sleep(0.2)  # its thread gives its slot back just after the close
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)) as extra:
            assert _closed_within(extra, 0.4)  # before the idle ones' deadline
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.6)
    assert _health(port) == 200


def test_other_methods_are_405_with_allow_get(port: int) -> None:
    """Read-only: POST /metrics or DELETE /health is 405 naming GET (not the base class's
    501 "unsupported method"); HEAD gets the status line and no body."""
    for method, path in (("POST", "/metrics"), ("DELETE", "/health"), ("PUT", "/x"),
                         ("HEAD", "/health")):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request(method, path, body=b"{}" if method != "HEAD" else None)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        assert response.status == 405, (method, path)
        assert response.getheader("Allow") == "GET"
        assert (body == b"") == (method == "HEAD"), (method, body)
