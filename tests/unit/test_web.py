"""`skeleton web` without a database or a testbed: the token and bind rules, the log tail's
ring buffer and filters, and the server's answers (GET only, 401, headers, no echo) on
loopback. The registry, the daemons and the browser: tests/registry/test_web_*.py."""

from __future__ import annotations

import fnmatch
import http.client
import json
import os
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from skeleton_app.config import Settings, load_config
from skeleton_app.errors import UsageError
from skeleton_app.web import WebServer
from skeleton_app.web.api import dumps
from skeleton_app.web.auth import Access, is_loopback, read_token_file
from skeleton_app.web.logtail import LogTail, line_level
from skeleton_app.web.server import CSP, STATIC
from tests.support.helpers import skeleton

REPO = Path(__file__).resolve().parents[2]
TOKEN = "t0k3n-" + "a" * 30


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    path = tmp_path / "config.yaml"
    path.write_text("nodes:\n  - {id: n1, host: 10.9.0.1, roles: [tts]}\n")
    return load_config(path, env={})


def token_file(tmp_path: Path, mode: int = 0o600, text: str = TOKEN) -> Path:
    path = tmp_path / "token"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


@contextmanager
def running(settings: Settings, access: Access) -> Iterator[WebServer]:
    server = WebServer(settings, bind="127.0.0.1", port=0, access=access, registry=None,
                       follow=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10)


def request(server: WebServer, path: str, *, method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


# ------------------------------------------------------------------ token and bind


def test_token_file_must_be_private_regular_and_hold_a_token(tmp_path: Path) -> None:
    assert read_token_file(str(token_file(tmp_path))) == TOKEN
    with pytest.raises(UsageError, match="chmod 600"):
        read_token_file(str(token_file(tmp_path, 0o644)))
    with pytest.raises(UsageError, match="expected one token"):
        read_token_file(str(token_file(tmp_path, 0o600, "short")))
    link = tmp_path / "link"
    link.symlink_to(token_file(tmp_path))
    with pytest.raises(UsageError, match="cannot open"):
        read_token_file(str(link))  # never followed through a link
    with pytest.raises(UsageError, match="cannot open"):
        read_token_file(str(tmp_path / "absent"))


def test_only_loopback_binds_go_without_a_token(tmp_path: Path) -> None:
    for bind in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(bind)
        assert Access.for_bind(bind, None).token is None
    for bind in ("0.0.0.0", "::", "10.1.2.3", "example.org"):
        assert not is_loopback(bind)
        with pytest.raises(UsageError, match="needs --token-file"):
            Access.for_bind(bind, None)
    assert Access.for_bind("0.0.0.0", str(token_file(tmp_path))).token == TOKEN


def test_cli_refuses_a_public_bind_without_token_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("nodes: []\n")
    proc = skeleton("web", "--bind", "0.0.0.0", "--port", "0", config=config, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "skeleton: error: --bind 0.0.0.0 is not a loopback address: it needs --token-file"
        " (a file of mode 0600 holding the token)"]
    loose = token_file(tmp_path, 0o640)
    proc = skeleton("web", "--bind", "0.0.0.0", "--port", "0", "--token-file", str(loose),
                    config=config, timeout=30)
    assert proc.returncode == 2 and "mode 0640" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ the log tail


def test_line_levels() -> None:
    assert line_level("2026-01-01T00:00:00.000+00:00 INFO registry up") == "INFO"
    assert line_level("2026-01-01T00:00:00.000+00:00 WARNING slow") == "WARNING"
    assert line_level("[warn] something") is None  # only the upper-case level words
    assert line_level("x WARN y") == "WARNING"
    assert line_level("no level here") is None
    assert line_level("a" * 100 + " ERROR late") is None  # only near the start


def test_tail_cursor_filters_and_bounds() -> None:
    tail = LogTail(capacity=5)
    tail.add("n1", b"2026 INFO one")
    tail.add("n2", b"2026 ERROR two \x1b[2J")
    tail.add("n1", b"plain three")
    lines, newest, dropped = tail.after(0)
    assert [ln.text for ln in lines] == ["2026 INFO one", "2026 ERROR two \\x1b[2J",
                                         "plain three"]
    assert (newest, dropped) == (3, False)
    assert [ln.text for ln in tail.after(1)[0]] == ["2026 ERROR two \\x1b[2J", "plain three"]
    assert [ln.node for ln in tail.after(0, node="n1")[0]] == ["n1", "n1"]
    assert [ln.level for ln in tail.after(0, level="WARNING")[0]] == ["ERROR"]
    assert [ln.level for ln in tail.after(0, level="INFO")[0]] == ["INFO", "ERROR"]
    for i in range(10):
        tail.add("n3", f"line {i}".encode())
    lines, newest, dropped = tail.after(3)
    assert newest == 13 and dropped and [ln.cursor for ln in lines] == [9, 10, 11, 12, 13]
    assert tail.after(13) == ([], 13, False)
    assert tail.after(0, limit=2)[0][-1].cursor == 13  # the newest when too many wait
    assert tail.states() == {"n1": "following", "n2": "following", "n3": "following"}


def test_json_has_no_markup_characters() -> None:
    data = {"text": "<script>alert('x')</script> & \u2028"}
    raw = dumps(data)
    assert b"<" not in raw and b">" not in raw and b"&" not in raw
    assert raw.isascii() and json.loads(raw) == data


# ------------------------------------------------------------------ the server


def test_get_only_headers_and_no_echo(settings: Settings) -> None:
    with running(settings, Access.for_bind("127.0.0.1", None)) as server:
        status, headers, body = request(server, "/api/nodes")
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        assert headers["Content-Security-Policy"] == CSP
        assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
        assert headers["X-Content-Type-Options"] == "nosniff"
        data = json.loads(body)
        assert data["registry"] == {"state": "none", "error": None}
        assert [n["id"] for n in data["nodes"]] == ["n1"]
        for method in ("POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
            status, headers, _ = request(server, "/api/nodes", method=method)
            assert status == 405 and headers["Allow"] == "GET", method
        hostile = "/<script>alert(1)</script>"
        status, _, body = request(server, hostile)
        assert (status, body) == (404, b"not found\n")
        status, _, body = request(server, "/api/logs?level=<b>x</b>&after=1")
        assert status == 400 and b"<b>" not in body
        status, _, body = request(server, "/api/history?range=<i>1y</i>")
        assert status == 400 and b"<i>" not in body
        # A loopback server without a token answers loopback names only (DNS rebinding).
        status, _, _ = request(server, "/api/nodes", headers={"Host": "evil.example:80"})
        assert status == 401
        for name, kind in STATIC.items():
            status, headers, body = request(server, f"/static/{name}")
            assert status == 200 and headers["Content-Type"].split(";")[0] == kind.split(";")[0]
            assert body
        assert request(server, "/static/../server.py")[0] == 404
        status, headers, body = request(server, "/")
        assert status == 200 and b"<script src=\"/static/app.js\"" in body
        assert b"<script>" not in body  # no inline script anywhere


def test_token_on_every_request_and_the_cookie(settings: Settings, tmp_path: Path) -> None:
    access = Access.for_bind("127.0.0.1", str(token_file(tmp_path)))
    with running(settings, access) as server:
        for path in ("/", "/static/app.js", "/api/nodes", "/api/logs", "/nope"):
            status, _, body = request(server, path)
            assert (status, body) == (401, b"token required\n"), path
            wrong = {"Authorization": "Bearer " + TOKEN[:-1] + "b"}
            assert request(server, path, headers=wrong)[0] == 401
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert request(server, "/api/nodes", headers=right)[0] == 200
        assert request(server, "/static/app.js", headers=right)[0] == 200
        # The URL an operator opens: 303 to / with the token in an HttpOnly cookie.
        status, headers, _ = request(server, f"/?token={TOKEN}")
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        jar = {"Cookie": cookie.split(";")[0]}
        assert request(server, "/", headers=jar)[0] == 200
        assert request(server, "/api/nodes", headers=jar)[0] == 200
        bad = {"Cookie": f"skeleton_web_{server.port}=" + "x" * len(TOKEN)}
        assert request(server, "/api/nodes", headers=bad)[0] == 401


def test_static_files_are_package_data() -> None:
    """A wheel install ships every file the page loads (pyproject's package-data)."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["skeleton_app"]
    static = REPO / "skeleton_app" / "web" / "static"
    for name in STATIC:
        assert (static / name).is_file(), name
        assert any(fnmatch.fnmatch(f"web/static/{name}", g) for g in globs), name
    assert "v1.6.32" in (static / "uPlot.iife.min.js").read_text()[:80]
    assert "MIT" in (static / "uPlot.LICENSE").read_text()
    # No node data through markup: the page's script never assigns HTML.
    script = (static / "app.js").read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert "document.write" not in script and "eval(" not in script
    assert os.access(static / "index.html", os.R_OK)
