"""The daemon's `GET /health` endpoint and its token.

Without a token the answer is just `{"status": "ok"}` (a liveness bit); with
`Authorization: Bearer TOKEN` it is the daemon's details (`Agent.health`), which rolling
restarts use. The token is `daemon.health_token`, else the one in the token file (kept
across restarts), else a random one; it is written to `<app_dir>/.skeleton-deploy/
health-token` (0600) for the node's own user (health.sh).

`GET /metrics` (agent/prometheus.py) is served here too, on the same address: open when that
address is a loopback one (only this machine reaches it), else only with the same token (401
without).

Dependency-light on purpose: the standard library's http.server in a thread, no framework.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import stat
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from skeleton_app import layout
from skeleton_app.errors import ConfigError
from skeleton_app.http_server import BoundedHTTPServer

# One logger for the whole daemon: main.py gives it its handlers (the daemon's log file).
log = logging.getLogger("skeleton_app.agent")


# A thread and a file descriptor per connection: past this many at once a new one is closed
# unanswered, so a flood of idle connections (the port may face the network) cannot use up
# the daemon's fds, which its jobs, registry and log need.
MAX_CONNECTIONS = 32
# Seconds one request may take in all: the handler's `timeout` bounds each read, not a client
# trickling a byte per read (slowloris).
REQUEST_DEADLINE = 10.0


class _HealthServer(BoundedHTTPServer):
    def connection_cap(self) -> int:
        return MAX_CONNECTIONS

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        timer = threading.Timer(REQUEST_DEADLINE, _cut, (request,))
        timer.daemon = True
        timer.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            timer.cancel()

    def report_error(self, request: Any, client_address: Any) -> None:
        log.exception("/health request from %s failed", client_address)  # the daemon's log


def _cut(request: socket.socket) -> None:
    with contextlib.suppress(OSError):
        request.shutdown(socket.SHUT_RDWR)


class _HealthServer6(_HealthServer):
    address_family = socket.AF_INET6  # a node whose cluster address is IPv6


def _saved_token(path: Path) -> str | None:
    """The token in the daemon's own token file, if it is a regular file of ours holding one
    (never followed through a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            return None
        token = fh.read(256).strip()
    return token if re.fullmatch(r"[A-Za-z0-9_\-.~+/=]{16,200}", token) else None


def load_token(app_dir: str, configured: str | None) -> str:
    """The token to serve: the configured one, else the saved one, else a new random one.
    A restarted daemon keeps the token its predecessor wrote: a health check that read the
    file just before the restart still gets the details (pid) it compares."""
    return (configured or _saved_token(Path(app_dir) / layout.HEALTH_TOKEN_FILE)
            or secrets.token_urlsafe(24))


def write_token(app_dir: str, token: str) -> None:
    """The token for the node's own user (health.sh reads it): 0600, replaced atomically."""
    path = Path(app_dir) / layout.HEALTH_TOKEN_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write the /health token to %s: %s", path, exc.strerror)


def is_loopback(address: str) -> bool:
    """Whether `address` (an IP or `localhost`) is reachable only from this machine."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def serve(bind: str, port: int, *, token: str,
          report: Callable[[bool], Mapping[str, Any]],
          metrics: Callable[[], tuple[bytes, str]] | None = None,
          ) -> tuple[BoundedHTTPServer, str]:
    """Serve /health in a thread on `bind`:`port`; `report(authorized)` is the answer.
    `metrics`: /metrics's body and content type (none: /metrics is 404).
    Returns the server and the address it listens on (see `_bind`)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "skeleton-daemon"
        timeout = 5  # a client that never sends its request must not pin a thread

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics" and metrics is not None:
                self._metrics(metrics)
                return
            if path != "/health":
                self._send(404, {"error": "not found"})
                return
            self._send(200, report(self._authorized()))

        def _method_not_allowed(self) -> None:
            # Read-only: 405 with what is allowed (the base class said 501, "unsupported").
            self._send(405, {"error": f"{self.command} not allowed"}, headers={"Allow": "GET"})

        do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = \
            do_CONNECT = _method_not_allowed

        def _metrics(self, render: Callable[[], tuple[bytes, str]]) -> None:
            address = self.server.server_address
            bound = str(address[0]) if isinstance(address, tuple) else ""
            if not is_loopback(bound) and not self._authorized():
                self._send(401, {"error": "a bearer token is required"},
                           headers={"WWW-Authenticate": 'Bearer realm="skeleton"'})
                return
            data, content_type = render()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            given = self.headers.get("Authorization", "")
            scheme, _, offered = given.partition(" ")
            # Constant-time: the comparison must not leak the token byte by byte.
            return scheme.lower() == "bearer" and hmac.compare_digest(
                offered.strip().encode(), token.encode())

        def _send(self, code: int, body: Mapping[str, Any],
                  headers: Mapping[str, str] | None = None) -> None:
            data = (json.dumps(body) + "\n").encode()
            self.send_response(code)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # health checks every few seconds would drown the log

    server, bound = _bind(bind, port, Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="skeleton-health", daemon=True)
    thread.start()
    return server, bound


def _bind(bind: str, port: int, handler: type[BaseHTTPRequestHandler]
          ) -> tuple[BoundedHTTPServer, str]:
    """Listen on `bind`. An address this machine does not have (the node is reached through
    NAT or a port forward) falls back to loopback, with a warning: the controller queries
    /health over SSH on the node anyway."""
    server_class = _HealthServer6 if ":" in bind else _HealthServer
    try:
        return server_class((bind, port), handler), bind
    except OSError as exc:
        unassigned = exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror)
        if not unassigned or bind in ("127.0.0.1", "::1"):
            raise ConfigError(
                f"cannot serve /health on {bind}:{port}: {exc.strerror} (another daemon"
                " running?)", key="daemon.api_port",
            ) from None
    log.warning("%s is not an address of this machine: /health on 127.0.0.1 only (set"
                " daemon.health_bind)", bind)
    return _bind("127.0.0.1", port, handler)
