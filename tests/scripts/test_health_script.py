"""health.sh against a real HTTP server on loopback: the token file it reads and the race
with a daemon that starts between that read and the request."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from skeleton_app import payloads

TOKEN = "s3cret-token"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A stand-in daemon: details only with the token; its token file appears only once the
    first request (without a token) has come in, as when the daemon starts in between."""
    token_file = tmp_path / "health-token"
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            auth = self.headers.get("Authorization", "")
            seen.append(auth)
            if auth == f"Bearer {TOKEN}":
                body = {"status": "ok", "node": "node-01", "pid": 4242}
            else:
                token_file.write_text(TOKEN + "\n")
                body = {"status": "ok"}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/health", token_file, seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_token_written_between_read_and_request_still_gets_the_details(
        server: tuple[str, Path, list[str]]) -> None:
    url, token_file, seen = server
    script = payloads.data("health.sh")
    proc = subprocess.run(["sh", "-s", "--", "5", url], input=script, capture_output=True,
                          env={"PATH": "/usr/bin:/bin",
                               "SKELETON_HEALTH_TOKEN_FILE": str(token_file)},
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.decode()
    body = out.split("--- begin body\n", 1)[1].split("\n--- end body", 1)[0]
    assert json.loads(body) == {"status": "ok", "node": "node-01", "pid": 4242}
    assert seen == ["", f"Bearer {TOKEN}"]  # asked again, now with the token


def test_a_restarted_daemon_keeps_its_predecessors_token(tmp_path: Path) -> None:
    """The token file is reused (a health check that read it just before a restart still
    gets the details); a link or junk there is never taken."""
    from skeleton_app.agent import _saved_token

    path = tmp_path / "health-token"
    path.write_text("tok_" + "a" * 28 + "\n")
    assert _saved_token(path) == "tok_" + "a" * 28
    path.write_text("short\n")
    assert _saved_token(path) is None
    path.unlink()
    assert _saved_token(path) is None
    (tmp_path / "elsewhere").write_text("b" * 32)
    path.symlink_to(tmp_path / "elsewhere")
    assert _saved_token(path) is None
