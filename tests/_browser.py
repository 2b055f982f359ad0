"""A small headless-Chromium driver for tests/test_browser.py, on the standard library alone.

Chromium is started with ``--remote-debugging-pipe``: it reads DevTools-protocol commands from
file descriptor 3 and writes replies and events to descriptor 4, each message JSON ended by a NUL
byte (the transport Puppeteer and Playwright use). No websocket, no extra package: the test needs
only Debian's ``chromium``. Every host but 127.0.0.1 resolves to nothing, so a page that reaches
for a CDN fails at once (and says so in its console) instead of waiting for a network that is not
there.

A page's problems are gathered as they happen: uncaught exceptions (``Runtime.exceptionThrown``),
``console.error`` calls, and the browser's own error log (a script or image that failed to load).
"""
from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import select
import shutil
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit


class BrowserError(RuntimeError):
    """Chromium answered a command with an error, died, or did not answer in time."""


class StaticServer:
    """Serves a folder on 127.0.0.1 (a free port) in a thread; records every request that failed."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.failed: list[tuple[int, str]] = []
        failed = self.failed

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def log_request(self, code="-", size="-"):
                if isinstance(code, int) and code >= 400:
                    failed.append((code, self.path))

        handler = functools.partial(Handler, directory=str(self.root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, relative: str) -> str:
        return self.base + relative.lstrip("/")

    def path_of(self, url: str) -> Path | None:
        """The file a URL of this server names (``None`` for another origin)."""
        if not url.startswith(self.base):
            return None
        path = urlsplit(url).path.lstrip("/")
        target = self.root / path
        return target / "index.html" if (not path or path.endswith("/")) else target

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Chromium:
    """One headless Chromium process, driven over the DevTools pipe."""

    def __init__(self, executable: str, profile: Path, width: int = 1280, height: int = 900,
                 log: Path | None = None):
        self.width, self.height = width, height
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_pipes():  # in the child, before exec: our pipe ends become its fds 3 and 4
            r, w = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(r, 3)
            os.dup2(w, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        args = [
            executable, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--disable-component-update", "--mute-audio", "--hide-scrollbars",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            f"--window-size={width},{height}", f"--user-data-dir={profile}", "about:blank",
        ]
        self._log = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                     preexec_fn=wire_pipes, pass_fds=(3, 4), close_fds=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self._backlog: list[dict] = []
        self.send("Target.setDiscoverTargets", {"discover": False}, timeout=60)  # first answer: ready

    # -- transport ---------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_chrome], [], [], min(left, 1.0))
            if not ready:
                if self.proc.poll() is not None:
                    raise BrowserError(f"Chromium exited with code {self.proc.returncode}")
                continue
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise BrowserError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_chrome, data):]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self._backlog.append(reply)

    def take_events(self, session: str, pump_seconds: float = 0.0) -> list[dict]:
        """Events of one session received so far (after reading for ``pump_seconds`` more)."""
        deadline = time.monotonic() + pump_seconds
        while pump_seconds > 0:
            try:
                self._backlog.append(self._read_message(deadline))
            except BrowserError:
                if self.proc.poll() is not None:
                    raise
                break
        mine = [e for e in self._backlog if e.get("sessionId") == session]
        self._backlog = [e for e in self._backlog if e.get("sessionId") != session]
        return mine

    def wait_event(self, session: str, method: str, timeout: float = 30.0) -> list[dict]:
        """Read until ``method`` arrives for ``session``; return that session's events till then."""
        seen = self.take_events(session)
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in seen):
            message = self._read_message(deadline)
            if message.get("sessionId") == session:
                seen.append(message)
            else:
                self._backlog.append(message)
        return seen

    def new_page(self) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        return Page(self, session)

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except BrowserError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_chrome, self._from_chrome):
            os.close(fd)
        if self._log is not subprocess.DEVNULL:
            self._log.close()


class Page:
    """A tab. ``problems`` lists what went wrong on it since the last :meth:`goto`."""

    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session = browser, session
        self.problems: list[dict] = []
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": browser.width, "height": browser.height,
                                                        "deviceScaleFactor": 1, "mobile": False})

    def send(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def _collect(self, events: list[dict]):
        for event in events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = (details.get("exception") or {}).get("description") or details.get("text", "")
                self.problems.append({"kind": "exception", "text": text.splitlines()[0] if text else "",
                                      "url": details.get("url", "")})
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                frames = (params.get("stackTrace") or {}).get("callFrames") or [{}]
                self.problems.append({"kind": "console.error", "text": text, "url": frames[0].get("url", "")})
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                self.problems.append({"kind": f"log:{entry.get('source', '')}", "text": entry.get("text", ""),
                                      "url": entry.get("url", "")})

    def goto(self, url: str, timeout: float = 60.0):
        """Open ``url`` and wait for its load event; the page's problems start afresh."""
        self.drain()
        self.problems = []
        self.send("Page.navigate", {"url": url})
        self._collect(self.browser.wait_event(self.session, "Page.loadEventFired", timeout))

    def drain(self, seconds: float = 0.0):
        """Record the problems reported so far (reading for ``seconds`` more)."""
        self._collect(self.browser.take_events(self.session, seconds))

    def evaluate(self, expression: str, timeout: float = 30.0):
        """Value of a JavaScript expression (awaited when it is a promise); raises on a JS error."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True, "timeout": int(timeout * 1000)},
                           timeout=timeout + 5)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"{expression[:80]}...: "
                               f"{(details.get('exception') or {}).get('description', details.get('text'))}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, interval: float = 0.1):
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for: {expression[:120]}")
            time.sleep(interval)

    def click(self, selector: str):
        """A real mouse click (pressed and released) at the centre of the first match of ``selector``."""
        # The first point of the element, from its centre outwards, that no other element covers
        # (a sticky header may hide part of it): a click there reaches the element as a reader's would.
        box = self.evaluate(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            " if (!el) return null; el.scrollIntoView({block: 'center'}); const r = el.getBoundingClientRect();"
            " for (const fy of [0.5, 0.75, 0.25, 0.9, 0.1]) for (const fx of [0.5, 0.25, 0.1]) {"
            "  const x = r.left + r.width * fx, y = r.top + r.height * fy, hit = document.elementFromPoint(x, y);"
            "  if (hit && (hit === el || el.contains(hit))) return {x, y}; }"
            " return null; })()")
        if box is None:
            raise BrowserError(f"nothing to click: {selector} is missing, hidden or covered")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"],
                                                   "button": "left", "clickCount": 1})

    def screenshot(self, path: Path) -> Path:
        """Save what the viewport shows as a PNG."""
        data = self.send("Page.captureScreenshot", {"format": "png"}, timeout=60)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


def find_chromium() -> str | None:
    """Debian's ``chromium`` (or another Chromium/Chrome) on PATH."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None
