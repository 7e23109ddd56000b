"""Headless Chromium (Debian's ``chromium``) driven over its DevTools protocol, for tests of what a user sees.

Chromium is started with ``--remote-debugging-port=0`` and a profile of its own; the port it picked is read
from ``DevToolsActivePort`` in that profile. Commands go over the page's WebSocket (aiohttp's client, a Ray
dependency), on an event loop owned by this object.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from tests.support.pipeline import terminate_group


def chromium_binary() -> str | None:
    """The path of Debian's ``chromium`` (installed by scripts/bootstrap.sh), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium with one page; a context manager that stops it (by pid) on exit."""

    def __init__(self, profile: Path, width: int = 1600, height: int = 1000) -> None:
        binary = chromium_binary()
        assert binary is not None, "chromium is not installed"
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a previous run's port
        self._process = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",  # tests run as root in CI containers
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(profile / "chromium.log").open("wb"),
            start_new_session=True,
        )
        self._loop = asyncio.new_event_loop()
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        try:
            self._loop.run_until_complete(self._connect(self._devtools_port(profile / "DevToolsActivePort")))
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, path: Path) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self._process.poll() is None, "chromium exited at start"
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.2)
        raise TimeoutError("chromium did not open its DevTools port")

    async def _connect(self, port: int) -> None:
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        self._socket = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)

    async def _send(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self._socket is not None
        call = next(self._ids)
        await self._socket.send_str(json.dumps({"id": call, "method": method, "params": params}))
        while True:
            message = json.loads((await self._socket.receive(timeout=60)).data)
            if message.get("id") == call:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command (e.g. ``Page.navigate``); its result."""
        return self._loop.run_until_complete(self._send(method, params))

    def set_cookie(self, url: str, name: str, value: str) -> None:
        """A cookie for ``url``, as the page's own login would set it."""
        self.call("Network.setCookie", url=url, name=name, value=value, httpOnly=True)

    def open(self, url: str) -> None:
        """Load ``url`` afresh (a reload when only its fragment differs from the page's, as single-page apps
        such as the Ray dashboard route by fragment)."""
        self.call("Page.navigate", url="about:blank")
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise's once it settles)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def type_into(self, label: str, text: str) -> bool:
        """Type ``text`` and Enter into the input labelled ``label`` (as a user would); False if no such input."""
        found = self.evaluate(
            "(() => { const l = [...document.querySelectorAll('label')].find(l => l.textContent.trim() === "
            f"{json.dumps(label)}); const i = l && document.getElementById(l.htmlFor); "
            "if (!i) return false; i.scrollIntoView({block: 'start'}); i.focus(); return true; })()"
        )
        if not found:
            return False
        self.call("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)
        return True

    def switch_on(self, caption: str) -> bool:
        """Turn on the switch (checkbox) whose caption starts with ``caption``; False if there is none."""
        return bool(
            self.evaluate(
                "(() => { const c = [...document.querySelectorAll('input[type=checkbox]')].find(c => { let e = c; "
                "while (e && !(e.textContent || '').trim()) e = e.parentElement; "
                f"return e && e.textContent.trim().startsWith({json.dumps(caption)}); }}); "
                "if (c && !c.checked) c.click(); return !!c; })()"
            )
        )

    def text(self) -> str:
        """The page's visible text (``document.body.innerText``)."""
        return str(self.evaluate("document.body ? document.body.innerText : ''"))

    def screenshot(self, path: Path) -> Path:
        """Save the page as a PNG at ``path``."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Close the connection and stop Chromium's process group."""
        if self._session is not None:
            self._loop.run_until_complete(self._session.close())
        self._loop.close()
        terminate_group(self._process)

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
