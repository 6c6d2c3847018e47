"""Real-browser helpers for tests/test_web.py: a static file server on 127.0.0.1 and
headless Chromium (the OS package, driven by selenium with the OS chromedriver; nothing
is downloaded). `why_no_browser()` says why the suite must be skipped, or None."""
from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import shutil
import threading
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def _which(names: tuple[str, ...]) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
        if os.path.exists(f"/usr/lib/chromium/{name}"):
            return f"/usr/lib/chromium/{name}"
    return None


def why_no_browser() -> str | None:
    """None when a browser, its driver and selenium are all present; else the reason."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[test]')"
    if _which(BROWSERS) is None:
        return "no Chromium found (Debian: apt-get install -y chromium chromium-driver)"
    if _which(DRIVERS) is None:
        return "no chromedriver found (Debian: apt-get install -y chromium-driver)"
    return None


class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".wasm": "application/wasm", ".sllm": "application/octet-stream"}

    def log_message(self, *args: Any) -> None:
        pass


class StaticServer:
    """Serves `root` on 127.0.0.1 (a free port) in a thread until close()."""

    def __init__(self, root: str | os.PathLike[str]):
        handler = functools.partial(_Quiet, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def chromium(extra_args: tuple[str, ...] = ()) -> Any:
    """A headless Chromium WebDriver using the system browser and driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = _which(BROWSERS) or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", *extra_args):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=_which(DRIVERS)), options=opts)
    driver.set_script_timeout(300)
    return driver


def run_js(driver: Any, body: str, *args: Any) -> Any:
    """Run an async function body in the page (sllm.js imported as `sllm`); returns its
    value, or raises AssertionError with the page's error message."""
    script = """
const done = arguments[arguments.length - 1];
const args = Array.from(arguments).slice(0, -1);
(async () => {
  const sllm = await import(new URL("sllm.js", location.href).href);
  BODY
})().then((value) => done({ok: true, value}),
          (e) => done({ok: false, error: (e && e.name ? e.name + ": " : "") + (e && e.message || String(e))}));
""".replace("BODY", body)
    result = driver.execute_async_script(script, *args)
    if not result["ok"]:
        raise AssertionError(f"in the browser: {result['error']}")
    return result["value"]
