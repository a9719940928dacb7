"""Start ``oasisvq studio`` in a subprocess and drive it with Playwright and Debian's
Chromium: what the browser tests and ``benchmarks/studio_latency.py`` share.

Playwright's own browser download is not used: ``CHROMIUM`` (``/usr/bin/chromium``, or
``$OASISVQ_CHROMIUM``) is launched with ``CHROMIUM_ARGS``, which keep it off the network.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import oasisvq

CHROMIUM = os.environ.get("OASISVQ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}  # 16 samples show without scrolling


class Server:
    """``oasisvq studio RUN`` on a free loopback port, in a subprocess of this Python."""

    def __init__(self, run: str | Path, env: dict | None = None, timeout: float = 180) -> None:
        env = {**os.environ, **(env or {})}
        # the package this process runs, also when it is not the installed one
        src = str(Path(oasisvq.__file__).parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        self.port = free_port()
        cmd = [sys.executable, "-m", "oasisvq", "studio", str(run), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()
        self.url = self._address(timeout)

    def _address(self, timeout: float) -> str:
        """The address the server prints once it answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(r"OASISVQ Studio: (http://\S+)", line):
                    return m.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError("the studio stopped:\n" + self.log())
            time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError("the studio printed no address:\n" + self.log())

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        """SIGTERM, as ``kill`` sends; returns the exit code."""
        self.proc.terminate()
        return self.proc.wait(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(playwright):
    """Debian's Chromium under Playwright, headless and offline."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def wait_loaded(page, selector: str, n: int = 1, changed_from: list[str] | None = None) -> None:
    """Wait until exactly ``n`` images match ``selector``, each with its pixels loaded
    (and, with ``changed_from``, none of them showing one of those addresses)."""
    page.wait_for_function(
        "([sel, n, old]) => { const im = [...document.querySelectorAll(sel)];"
        " return im.length === n && im.every(i => i.complete && i.naturalWidth > 0"
        " && !old.includes(i.src)); }",
        arg=[selector, n, changed_from or []],
    )


def sources(page, selector: str) -> list[str]:
    """The addresses of the images that ``selector`` matches."""
    return page.locator(selector).evaluate_all("ims => ims.map(i => i.src)")


def ask_brains(page, age: float, sex: str, count: int, tries: int = 5) -> None:
    """On a 3D run's Sample brains tab, set the age, the sex ("F" or "M") and how many
    volumes to draw. The page's first update sets the condition inputs, and the browser
    may apply it just after the first values were typed: they are typed again until
    they stay."""
    for _ in range(tries):
        page.fill("#sample3d-age input", f"{age:g}")
        page.click("#sample3d-sex input")
        page.get_by_role("option", name=sex, exact=True).click()
        box = page.locator("#count3d input[type=number]")
        box.fill(str(count))
        box.press("Enter")
        page.wait_for_timeout(300)
        if page.input_value("#sample3d-age input") == f"{age:g}":
            return
    raise RuntimeError(f"the page did not keep age {age:g}")
