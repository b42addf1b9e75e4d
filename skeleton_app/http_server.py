"""`BoundedHTTPServer`: the standard library's threading HTTP server as the node daemon's
/health and /metrics (skeleton_app/agent/health.py) and `skeleton web` (skeleton_app/web)
both need it: a cap on connections at once, quiet about clients that go away, and no DNS
lookup when it binds."""

from __future__ import annotations

import socketserver
import sys
import threading
from http.server import ThreadingHTTPServer
from typing import Any


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread and a file descriptor per connection: past `connection_cap()` at once a new
    one is closed unanswered, so a flood of idle connections (the port may face the network)
    cannot use up the process's fds, which its other work needs."""

    daemon_threads = True  # a slow client never delays the process's exit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(self.connection_cap())
        super().__init__(*args, **kwargs)

    def connection_cap(self) -> int:
        """Connections at once (read when the server starts)."""
        return 32

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client gone mid-answer (or cut at its deadline) is nothing to report; a bug is.
        if not isinstance(sys.exc_info()[1], OSError):
            self.report_error(request, client_address)

    def report_error(self, request: Any, client_address: Any) -> None:
        """A handler's bug (the base class prints it to stderr)."""
        super().handle_error(request, client_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for our FQDN: on a host without a reachable resolver
        # (the testbed's hosts, many LANs) that blocks for 10 s before the first answer.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
