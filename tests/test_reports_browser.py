"""Every report page opens in headless Chromium offline: no console errors, no
network requests, every figure drawn; a screenshot of each page is saved.

Chromium is driven through the DevTools protocol over a pipe
(``--remote-debugging-pipe``: commands on fd 3, replies on fd 4, NUL-separated
JSON), so the test needs no websocket client or browser-automation package.
Network requests are the protocol's ``Network.requestWillBeSent`` events: the
only URL a page may load is its own ``file://`` (plus ``data:``/``blob:``).
Skipped with a reason when ``/usr/bin/chromium`` (Debian package ``chromium``)
is absent; CI installs it.

Screenshots: ``$OUTCOMES_TEST_ARTIFACTS`` when set, else pytest's tmp dir;
the path is printed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from assets import reports
from schemas.settings import Settings
from tests.test_reports import synthetic_warehouse

CHROMIUM = os.environ.get("OUTCOMES_CHROMIUM", "/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)
ALLOWED_SCHEMES = ("file:", "data:", "blob:", "about:")

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) "
    "or set OUTCOMES_CHROMIUM",
)


TRAMPOLINE = (
    "import fcntl, os, sys; "
    "r, w = (fcntl.fcntl(int(a), fcntl.F_DUPFD, 10) for a in sys.argv[1:3]); "
    "os.dup2(r, 3); os.dup2(w, 4); os.execv(sys.argv[3], sys.argv[3:])"
)


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe."""

    def __init__(self, binary: str = CHROMIUM, timeout: float = 60.0):
        self.binary = binary
        self.timeout = timeout
        self.log = Path(tempfile.mkstemp(prefix="chromium-", suffix=".log")[1])
        self._start()

    def _start(self) -> None:
        binary = self.binary
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        child_r, self._to_chrome = os.pipe()
        self._from_chrome, child_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4: a tiny Python
        # trampoline moves the pipe ends there and execs the browser (sh's `3<&N`
        # only takes single-digit fds).
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                TRAMPOLINE,
                str(child_r),
                str(child_w),
                binary,
                *FLAGS,
                "--remote-debugging-pipe",
                f"--user-data-dir={self.profile}",
                "--window-size=1300,900",
                "about:blank",
            ],
            pass_fds=(child_r, child_w),
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )
        os.close(child_r)
        os.close(child_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def restart(self) -> None:
        """Start a fresh browser (the last one died: see ``tail()``)."""
        self.close(remove_log=False)
        self._start()

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(line for line in text if "dbus" not in line)[-3000:] or "(empty)"

    def close(self, remove_log: bool = True) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)
        if remove_log:
            self.log.unlink(missing_ok=True)

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from chromium")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._read_message(deadline)
            if event.get("method") == method:
                return event
            self.events.append(event)

    def drain(self, seconds: float) -> None:
        """Collect events for a while (late console messages, requests)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.events.append(self._read_message(deadline))
            except TimeoutError:
                return


@pytest.fixture(scope="module")
def browser():
    tools = DevTools()
    yield tools
    tools.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("browser_reports")
    settings = Settings(reports_dir=out)
    con = synthetic_warehouse()
    try:
        qi = reports.build_qi_report(con, settings)
        caseload = reports.build_caseload_reports(con, settings)
    finally:
        con.close()
    return [out / "index.html", *qi.pages, *caseload.pages]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = os.environ.get("OUTCOMES_TEST_ARTIFACTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


FIGURES_DRAWN = """
(() => {
  const divs = Array.from(document.querySelectorAll('.plotly-graph-div'));
  const drawn = divs.filter(d => d._fullLayout && d.querySelector('svg.main-svg'));
  return JSON.stringify({total: divs.length, drawn: drawn.length,
                         missing: divs.filter(d => !drawn.includes(d)).map(d => d.id),
                         plotly: typeof Plotly !== 'undefined',
                         height: document.documentElement.scrollHeight});
})()
"""


def open_page(browser: DevTools, path: Path, wait: float = 60) -> tuple[dict, list[dict]]:
    """Load ``path`` in a fresh tab; return the figure check and the tab's events.

    A browser that died (it happens rarely at start-up in containers) is restarted
    once; a second failure fails the test with the browser's own log.
    """
    try:
        return _open_page(browser, path, wait)
    except (BrokenPipeError, RuntimeError, TimeoutError) as first:
        browser.restart()
        try:
            return _open_page(browser, path, wait)
        except (BrokenPipeError, RuntimeError, TimeoutError) as second:
            raise AssertionError(
                f"chromium failed twice on {path.name} ({first!r}, {second!r}):\n{browser.tail()}"
            ) from second


def _open_page(browser: DevTools, path: Path, wait: float) -> tuple[dict, list[dict]]:
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.events.clear()
        browser.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        state: dict = {}
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            result = browser.send(
                "Runtime.evaluate", {"expression": FIGURES_DRAWN, "returnByValue": True}, session
            )
            state = json.loads(result["result"]["value"])
            if state["drawn"] == state["total"]:
                break
            time.sleep(0.25)
        browser.drain(0.5)
        full = path.name == "service.html"  # one full-length screenshot; the rest: the top
        state["screenshot"] = screenshot(
            browser, session, state.get("height", 900) if full else 900
        )
        events = [e for e in browser.events if e.get("sessionId") == session]
        browser.events.clear()
        return state, events
    finally:
        browser.send("Target.closeTarget", {"targetId": target})


def screenshot(browser: DevTools, session: str, height: int) -> bytes:
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1300, "height": min(int(height), 16000), "deviceScaleFactor": 1, "mobile": False},
        session,
    )
    shot = browser.send("Page.captureScreenshot", {"format": "png"}, session)
    return base64.b64decode(shot["data"])


def problems(events: list[dict]) -> tuple[list[str], list[str]]:
    """Console errors and exceptions; requests for anything but the page's own files."""
    errors, requests = [], []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(
                " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            errors.append(str(params["exceptionDetails"].get("text")))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(params["entry"].get("text", ""))
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith(ALLOWED_SCHEMES):
                requests.append(url)
    return errors, requests


def test_every_page_renders_offline(pages, browser, artifacts):
    assert len(pages) >= 6
    for path in pages:
        state, events = open_page(browser, path)
        errors, requests = problems(events)
        shot = artifacts / f"{path.parent.name}_{path.stem}.png"
        shot.write_bytes(state["screenshot"])
        print(f"screenshot: {shot}")
        assert errors == [], f"{path.name}: console errors {errors}"
        assert requests == [], f"{path.name}: network requests {requests}"
        assert state["drawn"] == state["total"], f"{path.name}: not drawn {state['missing']}"
        if path.name != "index.html":
            assert state["plotly"] and state["total"] >= 1, path.name
        assert shot.stat().st_size > 10_000


def test_the_probe_sees_errors_and_requests(browser, tmp_path):
    """The check is not vacuous: a page that logs an error and fetches a URL is caught."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<html><body><div class='plotly-graph-div' id='never'></div><script>"
        "console.error('boom'); fetch('http://192.0.2.1/x').catch(() => {});"
        "</script></body></html>",
        encoding="utf-8",
    )
    state, events = open_page(browser, page, wait=2)
    errors, requests = problems(events)
    assert any("boom" in e for e in errors)
    assert requests == ["http://192.0.2.1/x"]
    assert state["drawn"] == 0 and state["missing"] == ["never"]
