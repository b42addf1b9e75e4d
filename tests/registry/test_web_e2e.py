"""`skeleton web` end to end: real daemons on testbed hosts heartbeat into a real PostgreSQL,
the real CLI serves the page on 0.0.0.0 with a token, and a real headless Chromium
(Debian's `chromium`, over the DevTools pipe: tests/support/cdp.py) loads it: no console
error, every node shown, a chart with data points, a node's log line in the pane, hostile
node text shown as text; then the registry goes down (the page says so, the server lives)
and Ctrl-C stops the server cleanly. A screenshot is written under the test's tmp dir."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from skeleton_app.nodes import Node
from skeleton_app.registry import NodeSpec, PostgresRegistry, init_schema
from skeleton_app.testing import localdb
from skeleton_app.testing import testbed as tb_mod
from skeleton_app.testing.testbed import Testbed
from tests.support.cdp import Browser
from tests.support.db_fixtures import TEST_DEFAULTS
from tests.support.helpers import bootstrap_testbed, skeleton

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TOKEN = "web-e2e-" + "k" * 32
HOSTILE_LINE = "ERROR <script>document.title='owned'</script><img src=x onerror=alert(1)>"
DAEMON_LOG = "/home/skeleton/app/logs/skeleton-daemon.log"


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


def get(port: int, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        body = response.read()
        return response.status, json.loads(body) if response.status == 200 else body
    finally:
        conn.close()


def start_web(config: Path, token_file: Path) -> tuple[subprocess.Popen[str], int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "skeleton_app", "web", "--bind", "0.0.0.0", "--port", "0",
         "--token-file", str(token_file), "--config", str(config)],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = proc.stderr.readline()
    found = re.search(r"serving http://0\.0\.0\.0:(\d+)/", first)
    assert found, first + proc.stderr.read() if proc.poll() is not None else first
    return proc, int(found.group(1))


def test_the_page_in_a_real_browser(make_testbed: Callable[..., Testbed],
                                    tmp_path: Path) -> None:
    bed = make_testbed(2, db=True)
    assert bed.db is not None
    init_schema(bed.db.dsn)
    bootstrap_testbed(bed)
    cfg = bed.config_path
    start = skeleton("cluster", "daemon", "start", config=cfg)
    assert start.returncode == 0, start.stdout + start.stderr
    web: subprocess.Popen[str] | None = None
    browser: Browser | None = None
    try:
        with PostgresRegistry(bed.db.dsn, defaults=TEST_DEFAULTS, connect_timeout=5) as reg:
            # A registered node whose row is hostile (its daemon text and GPU name), not a
            # target: it is shown, never followed.
            reg.upsert_node(NodeSpec.from_node(Node(id="evil-01", host="10.9.9.9")))
            reg.heartbeat("evil-01", metrics={"load": [1e300, 0, 0], "gpu": {"gpus": [
                {"name": "<script>document.title='gpu'</script>", "utilization_pct": 5}]}},
                code_version="<img src=x onerror=alert(2)>")
            reg.set_enabled("evil-01", False)

            def running() -> bool:
                entries = {e.node.id: e for e in reg.list_entries()[0]}
                return all(entries[n].daemon_state == "running" and entries[n].seen_ago
                           is not None for n in ("node-01", "node-02"))

            wait_for(running, what="both daemons heartbeating")

        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        web, port = start_web(cfg, token_file)

        # ---------------------------------------------------------------- the API
        assert get(port, "/api/nodes", token=None)[0] == 401
        assert get(port, "/api/nodes", token="x" * len(TOKEN))[0] == 401
        status, nodes = get(port, "/api/nodes")
        assert status == 200 and nodes["registry"]["state"] == "up"
        rows = {n["id"]: n for n in nodes["nodes"]}
        assert set(rows) == {"node-01", "node-02", "evil-01"}
        assert rows["node-01"]["daemon_state"] == "running"
        assert rows["node-01"]["mem_used"] is not None and rows["evil-01"]["load1"] is None
        tb_mod.host_exec(bed, "node-01", ["sh", "-c", f"echo \"$(date -u +%FT%T.000+00:00)"
                                          f" {HOSTILE_LINE}\" >> {DAEMON_LOG}"])

        def logs_of(node: str) -> list[dict[str, Any]]:
            return [ln for ln in get(port, f"/api/logs?after=0&node={node}")[1]["lines"]]

        wait_for(lambda: logs_of("node-02"), what="a log line of node-02")
        hostile = wait_for(lambda: [ln for ln in logs_of("node-01")
                                    if HOSTILE_LINE in ln["text"]], what="the hostile line")
        assert hostile[0]["level"] == "ERROR"
        errors = get(port, "/api/logs?after=0&level=ERROR")[1]["lines"]
        assert errors and all(ln["level"] in ("ERROR", "CRITICAL") for ln in errors)
        history = wait_for(lambda: (h := get(port, "/api/history?range=1h")[1]["nodes"])
                           .get("node-01") and h, what="node-01's history")
        assert len(history["node-01"]["t"]) >= 1 and history["node-01"]["load1"][-1] is not None

        # ---------------------------------------------------------------- the browser
        browser = Browser(tmp_path)
        page = browser.open(f"http://127.0.0.1:{port}/?token={TOKEN}")
        # The token went into the cookie, out of the address bar.
        assert page.evaluate("location.pathname + location.search") == "/"
        shown = page.wait_for("Array.from(document.querySelectorAll('#nodes tbody tr'))"
                              ".map(r => r.dataset.node).sort().join(',')")
        assert shown == "evil-01,node-01,node-02"
        points = page.wait_for("(c => c && c.data[0].length)"
                               "(window.skeletonWeb.charts.get('node-01'))")
        assert points >= 1
        page.wait_for("document.getElementById('logs').textContent.includes("
                      "'node-02: ')")
        pane = page.wait_for("(t => t.includes(\"<script>document.title='owned'\") && t)"
                             "(document.getElementById('logs').textContent)")
        assert "node-01: " in pane
        row = page.evaluate("document.querySelector('#nodes tr[data-node=\"evil-01\"]')"
                            ".textContent")
        # (the version column shows a version's first 12 characters)
        assert "<img src=x o" in row and "<script>document.title='gpu'</script>" in row
        # Node text stayed text: no element came of it, no script ran.
        assert page.evaluate("document.querySelectorAll('script').length") == 2
        assert page.evaluate("document.querySelectorAll('#logs img, #nodes img,"
                             " #logs script, #nodes script').length") == 0
        assert page.evaluate("document.title") == "skeleton cluster"
        assert page.evaluate("document.getElementById('status').textContent") == "registry up"
        page.evaluate("document.querySelector('#range button[data-range=\"24h\"]').click()")
        page.wait_for("(c => c && c.data[0].length)(window.skeletonWeb.charts.get('node-01'))")
        shot = page.screenshot(tmp_path / "skeleton-web.png")
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 10_000
        # The pane's filters: by level, then by node.
        choose = ("(([id, value]) => {{ const s = document.getElementById(id); s.value = value;"
                  " s.dispatchEvent(new Event('change')); }})({})")
        page.evaluate(choose.format('["log-level", "ERROR"]'))
        only = page.wait_for("(p => p.childElementCount > 0 && Array.from(p.children).every("
                             "d => d.className === 'ERROR' || d.className === 'CRITICAL')"
                             " && p.textContent)(document.getElementById('logs'))")
        assert "owned" in only and "registry up" not in only
        page.evaluate(choose.format('["log-level", ""]'))
        page.evaluate(choose.format('["log-node", "node-02"]'))
        only = page.wait_for("(p => p.childElementCount > 0 && Array.from(p.children).every("
                             "d => d.textContent.startsWith('node-02: ')) && p.textContent)"
                             "(document.getElementById('logs'))")
        assert "registry up" in only
        assert page.errors() == []

        # ---------------------------------------------------------------- registry down
        localdb.stop_postgres(bed.db.dir)
        status, nodes = get(port, "/api/nodes")
        assert status == 200 and nodes["registry"]["state"] == "down"
        assert nodes["registry"]["error"] and len(nodes["nodes"]) == 3
        page.wait_for("document.getElementById('status').textContent"
                      ".startsWith('registry down (retrying)')")
        assert web.poll() is None
    finally:
        if browser is not None:
            browser.close()
        if web is not None and web.poll() is None:
            web.send_signal(signal.SIGINT)  # Ctrl-C
            try:
                _out, err = web.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                web.kill()
                web.communicate()
                raise
            assert web.returncode == 0, err
            assert "skeleton web: stopped" in err
        skeleton("cluster", "daemon", "stop", config=cfg)
