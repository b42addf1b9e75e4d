"""A headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for the web
page's browser tests: `Browser(tmp_path)`, `page = browser.open(url)`, `page.evaluate(js)`,
`page.screenshot(path)`, `page.errors()`.

The protocol runs over `--remote-debugging-pipe` (JSON messages ended by NUL on the
browser's fds 3 and 4): no port, no websocket client, no dependency. Measured against
Playwright's Python package: the same checks need no 40 MB wheel and no Node driver.
Chromium runs as root in the tests' namespace, hence `--no-sandbox`; its profile lives in
the test's tmp dir; it is killed by the PID started here.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class CdpError(RuntimeError):
    pass


def _high(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """One headless Chromium process and its DevTools pipe."""

    def __init__(self, tmp_path: Path, *, width: int = 1400, height: int = 1300):
        profile = tmp_path / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Moved above fd 9 so that the redirections to 3 and 4 below cannot close them (bash:
        # dash takes single-digit fds only).
        to_browser_r, from_browser_w = (_high(to_browser_r), _high(from_browser_w))
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", "--remote-debugging-pipe",
                f"--user-data-dir={profile}", f"--window-size={width},{height}",
                "about:blank"]
        # The browser reads commands on fd 3 and writes replies on fd 4.
        script = (f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
                  f' {to_browser_r}<&- {from_browser_w}>&-')
        self.log = tmp_path / "chromium.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["bash", "-c", script, CHROMIUM, *args], pass_fds=(to_browser_r, from_browser_w),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True, name="cdp-reader")
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._cond.notify_all()
                return
            *messages, buf = (buf + chunk).split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                with self._cond:
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self.events.append(message)
                    self._cond.notify_all()

    def send(self, method: str, params: dict[str, Any] | None = None, *,
             session: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        with self._cond:
            self._next_id += 1
            call_id = self._next_id
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while call_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise CdpError(f"{method}: no reply (browser log: {self.log})")
                self._cond.wait(min(left, 0.5))
            reply = self._replies.pop(call_id)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def open(self, url: str, *, timeout: float = 30.0) -> Page:
        """A new tab showing `url`, loaded (its load event fired)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target,
                                                      "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Runtime", "Log", "Page"):
            page.send(f"{domain}.enable")
        seen = len(self.events)
        page.send("Page.navigate", {"url": url})
        page.wait_event("Page.loadEventFired", since=seen, timeout=timeout)
        return page

    def close(self) -> None:
        with contextlib.suppress(CdpError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # Its renderers are in its session (start_new_session): the group goes too.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)


class Page:
    """One tab of the browser (a flat DevTools session)."""

    def __init__(self, browser: Browser, session: str):
        self.browser = browser
        self.session = session

    def send(self, method: str, params: dict[str, Any] | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def wait_event(self, method: str, *, since: int = 0, timeout: float = 30.0
                   ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        cond = self.browser._cond
        with cond:
            while True:
                for event in self.browser.events[since:]:
                    if event.get("method") == method and event.get("sessionId") == self.session:
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CdpError(f"no {method} within {timeout}s")
                cond.wait(min(left, 0.5))

    def evaluate(self, expression: str) -> Any:
        """The value of a JS expression (awaited when it is a promise)."""
        reply = self.send("Runtime.evaluate", {"expression": expression,
                                               "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in reply:
            raise CdpError(f"{expression!r}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, *, timeout: float = 30.0) -> Any:
        """The first truthy value of `expression`, polled."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CdpError(f"timed out after {timeout}s waiting for {expression!r}")
            time.sleep(0.25)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png",
                                                    "captureBeyondViewport": True})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def errors(self) -> list[str]:
        """Every console error, uncaught exception and browser-logged error (a failed load,
        a Content-Security-Policy violation) of this tab so far."""
        found: list[str] = []
        with self.browser._cond:
            events = [e for e in self.browser.events if e.get("sessionId") == self.session]
        for event in events:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails']}")
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") in (
                    "error", "assert"):
                found.append(f"console.{params['type']}: {params.get('args')}")
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                found.append(f"log: {entry.get('text')} ({entry.get('url')})")
        return found
