"""Shared by the deploy and daemon tests: a code tree to deploy, a stand-in node daemon that
really runs from the app dir, and per-test configs (each test gets its own app dir on every
host, so tests sharing the session testbed never see each other's files or daemons)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings, load_config
from skeleton_app.ops.daemon import daemon_control
from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import config_variant

# The stand-in daemon. It reads the deployed version once, at start, like real code would: only
# a restart makes it serve a newly deployed version.
STANDIN = '''\
"""Stand-in for the skeleton_app node daemon: GET /health -> pid, node, versions."""
import json, os, signal, socket, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer


def first_line(path):
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return None


STARTED = time.time()
VERSION = first_line("VERSION")
CODE_VERSION = first_line(".skeleton-deploy/digest")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"pid": os.getpid(), "node": os.environ.get("SKELETON_NODE_ID"),
                           "version": VERSION, "code_version": CODE_VERSION,
                           "started": STARTED}).encode()
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(HTTPServer):
    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(): a DNS timeout on hosts without DNS.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_name, self.server_port = "standin", self.server_address[1]


signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print("standin starting pid", os.getpid(), "version", VERSION, flush=True)
if os.path.exists(".no-health"):
    time.sleep(3600)  # runs, but never answers: a node that does not come back
Server(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
'''

STANDIN_NAME = "skeleton_app_standin.py"


def standin_command(port: int) -> str:
    # The node's own python3 (the stand-in needs only the standard library): the hosts never
    # run anything from the controller's virtualenv as their daemon.
    return f"env PYTHONPATH=. python3 {STANDIN_NAME} {port}"


def make_source(root: Path, version: str, *, extra: dict[str, str] | None = None) -> Path:
    """A small code tree (with everything the default excludes must keep out)."""
    files = {
        "VERSION": f"{version}\n",
        STANDIN_NAME: STANDIN,
        "app/__init__.py": "",
        "app/main.py": f"VERSION = {version!r}\n",
        "app/data/config.json": '{"a": 1}\n',
        "bin/run.sh": "#!/bin/sh\necho run\n",
        # Excluded by default: must never reach a node.
        ".venv/bin/python": "not a python\n",
        "app/__pycache__/main.cpython-311.pyc": "bytecode",
        "app/stale.pyc": "bytecode",
        ".git/HEAD": "ref: refs/heads/main\n",
        "logs/controller.log": "local log\n",
        **(extra or {}),
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "bin/run.sh").chmod(0o755)
    return root


DEPLOYED = {"VERSION", STANDIN_NAME, "app/__init__.py", "app/main.py", "app/data/config.json",
            "bin/run.sh"}
EXCLUDED = {".venv", "app/__pycache__", "app/stale.pyc", ".git", "logs/controller.log"}


def unique_app_dir(prefix: str) -> str:
    return f"/home/skeleton/{prefix}-{uuid.uuid4().hex[:8]}"


def variant(testbed: Testbed, tmp_path: Path, *, app_dir: str | None = None,
            port: int = 8765, name: str = "config.yaml", **sections: Any) -> Path:
    """A config for this test: its own app dir, the stand-in daemon, short graces."""
    daemon = {"command": standin_command(port), "start_grace": 0.5, "stop_grace": 3,
              "api_port": port}
    daemon.update(sections.pop("daemon", {}))
    app = {"dir": app_dir or unique_app_dir("t")}
    app.update(sections.pop("app", {}))
    return config_variant(testbed, tmp_path / name, app=app, daemon=daemon, **sections)


def settings_of(path: Path) -> Settings:
    return load_config(path, env={})


def host_path(testbed: Testbed, node: str, remote: str) -> Path:
    """Where a path under /home/skeleton on `node` lives on this machine."""
    rel = os.path.relpath(remote, "/home/skeleton")
    assert not rel.startswith(".."), remote
    return testbed.host(node).home / rel


@contextmanager
def daemons_stopped_after(settings: Settings) -> Iterator[Cluster]:
    """A cluster for `settings` whose daemons are stopped at the end, whatever happened."""
    cluster = Cluster(settings)
    try:
        yield cluster
    finally:
        try:
            daemon_control(cluster, cluster.nodes, "stop")
        finally:
            cluster.close()
