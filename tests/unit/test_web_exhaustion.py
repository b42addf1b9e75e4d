"""`skeleton web` under a flood (security review of issue #16): idle connections past the
cap are closed at once and a trickled request is cut at its deadline, so neither the fds nor
the threads of the server run out while the attacker holds on."""

from __future__ import annotations

import socket
import time

import pytest

from skeleton_app.config import Settings
from skeleton_app.web import server as web_server
from skeleton_app.web.auth import Access
from tests.unit.test_web import TOKEN, request, running, settings  # noqa: F401  (fixture)


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


def test_connections_past_the_cap_are_closed_and_the_server_recovers(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(web_server, "MAX_CONNECTIONS", 8)
    with running(settings, Access(TOKEN)) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(8)]
        try:
            time.sleep(0.3)  # every one accepted and holding its slot
            with socket.create_connection(("127.0.0.1", server.port)) as extra:
                assert _closed_within(extra, 3)
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 5
        status = 0
        while time.monotonic() < deadline:
            try:
                status = request(server, "/api/nodes",
                                 headers={"Authorization": f"Bearer {TOKEN}"})[0]
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200


def test_a_trickled_request_is_cut_at_its_deadline(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(web_server, "REQUEST_DEADLINE", 0.5)
    with running(settings, Access(TOKEN)) as server, \
            socket.create_connection(("127.0.0.1", server.port)) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert _closed_within(slow, 5)
