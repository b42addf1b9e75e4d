"""`skeleton web`'s HTTP server: the standard library's ThreadingHTTPServer (no dependency;
a page polled every few seconds by a handful of operators needs nothing more).

Rules every answer follows:
- GET only: any other method is 405 (the page is read-only; nothing here runs on a node).
- The token (when the server has one) on EVERY request, page, static file or API, compared
  in constant time: from the `skeleton_web_<port>` cookie (HttpOnly, SameSite=Strict), an
  `Authorization: Bearer` header or `?token=` (the URL an operator opens once: the page
  then answers 303 to `/` with the cookie set, so the token leaves the address bar). 401
  without it. A tokenless (loopback) server accepts only loopback Host headers (DNS
  rebinding).
- No request data is ever written into an answer: error bodies are fixed texts.
- Strict headers: a Content-Security-Policy allowing only this origin's scripts and styles
  (no inline script), nosniff, no framing, no referrer.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import signal
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from skeleton_app.http_server import BoundedHTTPServer
from skeleton_app.web.api import WebApi, dumps
from skeleton_app.web.auth import Access
from skeleton_app.web.logtail import LEVELS, LogFollower, LogTail

if TYPE_CHECKING:
    from skeleton_app.config import Settings
    from skeleton_app.registry import Registry
    from skeleton_app.registry.job_records import JobStore

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
       " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
STATIC = {  # the files of static/ the page may load, and their types
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
MAX_NODE_ID = 200
# A thread and a file descriptor per connection: past this many at once a new one is closed
# unanswered (a flood of idle connections must not exhaust the fds, which would leave accept
# failing in a busy loop and the log followers and the registry unable to connect).
MAX_CONNECTIONS = 64
# Seconds one request may take from its first byte (or a kept-alive connection's idle wait)
# to its answer: a client trickling a byte per `timeout` (slowloris) is cut here.
REQUEST_DEADLINE = 30.0


class _Server(BoundedHTTPServer):
    # The request deadline is the handler's (_Handler).

    def connection_cap(self) -> int:
        return MAX_CONNECTIONS


class _Server6(_Server):
    address_family = socket.AF_INET6


def _static(name: str) -> bytes:
    return (importlib.resources.files("skeleton_app.web") / "static" / name).read_bytes()


class WebServer:
    """The bound server with its API and log follower; `serve_forever()` until `shutdown()`
    (another thread) or Ctrl-C (the main thread)."""

    def __init__(self, settings: Settings, *, bind: str, port: int, access: Access,
                 registry: Registry | None, jobs: JobStore | None = None,
                 follow: bool = True):
        self.tail = LogTail()
        self.api = WebApi(settings, registry, self.tail, jobs=jobs)
        self.access = access
        self._registry = registry
        self._jobs = jobs
        server_class = _Server6 if ":" in bind else _Server
        self.httpd = server_class((bind.strip("[]"), port), _handler(self))
        self.port = int(self.httpd.server_address[1])
        self.cookie = f"skeleton_web_{self.port}"
        self.follower = LogFollower(settings, self.api.list_nodes, self.tail) if follow else None

    def url(self, bind: str) -> str:
        host = f"[{bind.strip('[]')}]" if ":" in bind else bind
        return f"http://{host}:{self.port}/"

    def serve_forever(self) -> None:
        if self.follower is not None:
            self.follower.start()
        try:
            self.httpd.serve_forever(poll_interval=0.25)
        finally:
            self.close()

    def shutdown(self) -> None:
        self.httpd.shutdown()

    def close(self) -> None:
        self.httpd.server_close()
        if self.follower is not None:
            self.follower.stop()
        for part in (self._jobs, self._registry):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.close()


def serve(settings: Settings, *, bind: str, port: int, token_file: str | None,
          say: Callable[[str], None]) -> None:
    """`skeleton web`: check the token rule (UsageError, exit 2: nothing bound), bind, say
    where, serve until Ctrl-C or SIGTERM, then stop the log followers and close."""
    access = Access.for_bind(bind, token_file)
    registry: Registry | None = None
    jobs: JobStore | None = None
    if settings.registry.dsn:
        from skeleton_app.registry import open_registry
        from skeleton_app.registry.jobs import open_job_store

        # Both connect lazily: a registry down at start is said on the page, not here.
        registry = open_registry(settings, application_name="skeleton-web")
        jobs = open_job_store(settings, application_name="skeleton-web")
    try:
        server = WebServer(settings, bind=bind, port=port, access=access, registry=registry,
                           jobs=jobs)
    except OSError as exc:
        from skeleton_app.errors import UsageError

        raise UsageError(f"cannot listen on {bind} port {port}: {exc.strerror}") from None
    where = server.url(bind)
    say(f"skeleton web: serving {where}"
        + (f" (open {where}?token=... with the token of {token_file})" if token_file else "")
        + "; Ctrl-C stops it")

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        say("skeleton web: stopped")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _handler(web: WebServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        server_state = web

    return Handler


class _Handler(BaseHTTPRequestHandler):
    server_state: WebServer
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a connection may sit idle or half-sent: no thread held forever

    def handle_one_request(self) -> None:
        timer = threading.Timer(REQUEST_DEADLINE, self._cut)
        timer.daemon = True
        timer.start()
        try:
            super().handle_one_request()
        finally:
            timer.cancel()

    def _cut(self) -> None:
        """The request's time is up: its reads and writes fail, its thread ends."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def version_string(self) -> str:
        return "skeleton-web"  # no Python version for a scanner to match

    # ------------------------------------------------------------------ methods

    def do_GET(self) -> None:
        web = self.server_state
        url = urlsplit(self.path)
        query = parse_qs(url.query, max_num_fields=10)
        offered = self._offered_token(query)
        if not web.access.allows(offered, self.headers.get("Host")):
            self._send(HTTPStatus.UNAUTHORIZED, b"token required\n", "text/plain")
            return
        if web.access.token is not None and "token" in query and url.path == "/":
            # The URL an operator opened: keep the token in a cookie, not in the address
            # bar (nor in the history, nor in a Referer).
            self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", extra={
                "Location": "/",
                "Set-Cookie": f"{web.cookie}={web.access.token}; HttpOnly; SameSite=Strict;"
                              " Path=/"})
            return
        self._route(url.path, query)

    def _method_not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: GET only\n", "text/plain",
                   extra={"Allow": "GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = \
        do_CONNECT = _method_not_allowed

    # ------------------------------------------------------------------ routes

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        api = self.server_state.api

        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        if path in ("/", "/index.html"):
            self._file("index.html")
        elif path == "/favicon.ico":
            self._file("favicon.svg")
        elif path.startswith("/static/") and path[len("/static/"):] in STATIC:
            self._file(path[len("/static/"):])
        elif path == "/api/nodes":
            self._json(api.nodes())
        elif path == "/api/history":
            node = one("node")
            history = api.history(one("range") or "1h", node) if (
                node is None or len(node) <= MAX_NODE_ID) else None
            if history is None:
                self._send(HTTPStatus.BAD_REQUEST, b"range: one of 1h, 24h, 7d; node: an id\n",
                           "text/plain")
            else:
                self._json(history)
        elif path == "/api/runs":
            self._json(api.runs())
        elif path == "/api/jobs":
            self._json(api.jobs())
        elif path == "/api/logs":
            after, node, level = one("after") or "0", one("node") or None, one("level")
            if (not after.isdigit() or len(after) > 18 or (level or "") not in ("", *LEVELS)
                    or (node is not None and len(node) > MAX_NODE_ID)):
                self._send(HTTPStatus.BAD_REQUEST, b"after: a cursor; level: one of "
                           + ", ".join(LEVELS).encode() + b"\n", "text/plain")
            else:
                self._json(api.logs(int(after), node=node, level=level or None))
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    # ------------------------------------------------------------------ helpers

    def _offered_token(self, query: dict[str, list[str]]) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[len("Bearer "):].strip()
        if "token" in query:
            return query["token"][-1]
        try:
            jar = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            return None
        morsel = jar.get(self.server_state.cookie)
        return morsel.value if morsel is not None else None

    def _file(self, name: str) -> None:
        self._send(HTTPStatus.OK, _static(name), STATIC[name],
                   extra={"Cache-Control": "no-cache"})

    def _json(self, data: dict[str, Any]) -> None:
        self._send(HTTPStatus.OK, dumps(data), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, *,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type if "charset" in content_type
                         else f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        if "Cache-Control" not in (extra or {}):
            self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        # The base class's error page quotes the request (escaped); ours says only the status.
        status = HTTPStatus(code)
        self.close_connection = True
        self._send(status, f"{status.value} {status.phrase}\n".encode(), "text/plain",
                   extra={"Connection": "close"})

    def log_message(self, format: str, *args: Any) -> None:
        # Silent: a request line carries the token (`?token=`), and the page polls every
        # few seconds; errors are answered, not logged.
        return

    def log_error(self, format: str, *args: Any) -> None:
        return
