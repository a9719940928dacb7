"""``oasisvq studio`` driven in a real browser: Playwright with Debian's Chromium, against a
server the tests start (a subprocess, as a user would) on a tiny run they train.

Needs the ``studio`` and ``test`` extras and ``/usr/bin/chromium`` (``bash tests/run.sh``
installs them); skipped without them, except under CI, where that is a failure.
``OASISVQ_STUDIO_RUN=RUN`` drives that run instead of a tiny one, and
``OASISVQ_STUDIO_SCREENSHOT=docs/studio.png`` also writes the screenshot of the docs.
"""

from __future__ import annotations

import http.client
import importlib.util
import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_image
from PIL import Image
from studio_fixture import make_run

import oasisvq
from oasisvq.studio import driver

TIMEOUT_MS = 30_000


def _require() -> None:
    missing = [m for m in ("gradio", "playwright") if importlib.util.find_spec(m) is None]
    if not Path(driver.CHROMIUM).exists():
        missing.append(driver.CHROMIUM)
    if missing:
        why = f"{', '.join(missing)} missing (bash tests/run.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {why}")
        pytest.skip(why)


def serve(run: str | Path, env: dict) -> driver.Server:
    """``oasisvq studio RUN`` started, or the test failed with its output."""
    try:
        return driver.Server(run, env)
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """``oasisvq studio RUN --port P`` in a subprocess; yields its address."""
    _require()
    base = tmp_path_factory.mktemp("studio")
    cache = {"OASISVQ_CACHE": str(base / "cache")}
    run = os.environ.get("OASISVQ_STUDIO_RUN")
    if run is None:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("OASISVQ_CACHE", cache["OASISVQ_CACHE"])
            run = make_run(base)
    server = serve(run, cache)
    yield server.url
    assert server.stop() == 0, server.log()  # SIGTERM stops it cleanly


@pytest.fixture(scope="module")
def browser(server: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = driver.launch(p)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def page(browser, server: str):
    """A fresh browser context on the page, once its first reconstruction is shown; it
    records every URL the page asks for."""
    context, pg = _open(browser, server)
    yield pg
    context.close()


def _open(browser, server: str):
    """A new browser context (its own cookies: another user) on the page, once the page
    shows its first reconstruction (its viewport shows 16 samples without scrolling:
    the gallery loads its images lazily)."""
    context = browser.new_context(viewport=driver.VIEWPORT)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.requested = []
    pg.on("request", lambda r: pg.requested.append(r.url))
    pg.goto(server)
    _loaded(pg, "#recon-output img")
    return context, pg


def _loaded(pg, selector: str, n: int = 1) -> None:
    driver.wait_loaded(pg, selector, n)


def _pixels(pg, selector: str) -> np.ndarray:
    """The pixels of the image ``selector`` shows, as the server sent them."""
    body = pg.request.get(pg.get_attribute(selector, "src")).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("L"))


def _codes(pg) -> np.ndarray:
    """The Edit tab's code grid, read from its table."""
    cells = pg.locator("#edit-codes td").evaluate_all("tds => tds.map(t => +t.dataset.code)")
    side = int(len(cells) ** 0.5)
    return np.array(cells).reshape(side, side)


def _tab(pg, name: str) -> None:
    pg.get_by_role("tab", name=name, exact=True).click()


def _toast(pg, text: str) -> str:
    toast = pg.locator("[data-testid='toast-body']", has_text=text)
    toast.first.wait_for()
    return toast.first.inner_text()


def _sample(pg, n: int) -> None:
    _tab(pg, "Sample")
    box = pg.locator("#count input[type=number]")
    box.fill(str(n))
    box.press("Enter")
    pg.click("#sample-btn")
    _loaded(pg, "#samples img", n)


def test_sample_shows_the_requested_images_and_a_zip(page, shots: Path) -> None:
    _sample(page, 5)
    from playwright.sync_api import expect

    expect(page.get_by_role("button", name="Download ZIP")).to_be_enabled()  # made just after
    with page.expect_download() as got:
        page.click("#zip")
    with zipfile.ZipFile(got.value.path()) as z:
        assert sum(n.startswith("images/") for n in z.namelist()) == 5
        assert {"codes.npy", "settings.json"} <= set(z.namelist())
    page.locator("#samples button.thumbnail-item").nth(2).click()
    page.click("#nearest-btn")
    _loaded(page, "#nearest-image img")
    assert re.search(r"SSIM \d\.\d{3} to sample 2", page.inner_text("#nearest-text"))
    page.screenshot(path=shots / "sample.png", full_page=True)


def test_upload_shows_its_reconstruction_and_ssim(page, shots: Path, tmp_path: Path) -> None:
    if os.environ.get("OASISVQ_STUDIO_SCREENSHOT"):  # the docs' picture: a slice of the data
        page.wait_for_timeout(1000)  # the page-load events' last updates
        page.screenshot(path=os.environ["OASISVQ_STUDIO_SCREENSHOT"])
    path = tmp_path / "my-slice.png"
    Image.fromarray(blob_image(np.random.default_rng(1), 96)).save(path)
    page.set_input_files("#upload input[type=file]", path)
    metrics = page.locator("#recon-metrics", has_text="my-slice.png")
    metrics.wait_for()
    ssim = float(re.search(r"SSIM (-?\d\.\d+)", metrics.inner_text()).group(1))
    assert -1 <= ssim <= 1
    _loaded(page, "#recon-output img")
    original = _pixels(page, "#recon-original img")
    assert original.shape[0] == original.shape[1] and original.std() > 0
    cells = page.locator("#recon-codes td[title*='code']")
    assert cells.count() in (64, 256, 1024)  # the grid, one hover title per cell
    page.screenshot(path=shots / "reconstruct.png", full_page=True)


def test_edit_a_region_changes_the_image(page, shots: Path) -> None:
    _tab(page, "Edit")
    page.click("#edit-load-current")
    _loaded(page, "#edit-canvas img")
    page.click("#select-all")
    page.fill("#edit-code input", "0")
    page.click("#set-code-btn")
    page.locator("#edit-info", has_text="64 cells set to code 0").wait_for()
    before = _pixels(page, "#edit-canvas img")
    page.click("#select-clear")
    page.get_by_label("rectangle").check()
    canvas = page.locator("#edit-canvas img")
    size = canvas.bounding_box()["width"]
    canvas.click(position={"x": size * 0.30, "y": size * 0.30})  # cell (2, 2)
    page.locator("#edit-info", has_text="opposite corner").wait_for()
    canvas.click(position={"x": size * 0.55, "y": size * 0.55})  # cell (4, 4)
    page.locator("#edit-info", has_text="9 of 64").wait_for()
    page.fill("#edit-code input", "7")
    page.click("#set-code-btn")
    page.locator("#edit-info", has_text="9 cells set to code 7").wait_for()
    after = _pixels(page, "#edit-canvas img")
    assert np.abs(after.astype(int) - before.astype(int)).max() > 0
    codes = _codes(page)
    rect = np.zeros((8, 8), bool)
    rect[2:5, 2:5] = True
    assert (codes[rect] == 7).all() and (codes[~rect] == 0).all()
    page.click("#resample-btn")
    page.locator("#edit-info", has_text="9 cells drawn anew").wait_for()
    assert (_codes(page)[~rect] == 0).all()  # only the selected cells are drawn again
    page.screenshot(path=shots / "edit.png", full_page=True)


def test_surprise_map_appears(page, shots: Path) -> None:
    _tab(page, "Surprise")
    page.click("#surprise-btn")
    _loaded(page, "#surprise-map img")
    assert re.search(r"NLL \d+\.\d bits", page.inner_text("#surprise-text"))
    page.screenshot(path=shots / "surprise.png", full_page=True)


def test_codes_tab_shows_a_code_and_where_it_occurs(page) -> None:
    _tab(page, "Codes")
    page.locator("#codebook button.thumbnail-item").nth(1).click()
    page.locator("#code-info", has_text="code 1").wait_for()
    assert re.search(r"code 1\*?\*?: \d+ cells", page.inner_text("#code-info"))
    _loaded(page, "#code-tile img")
    _loaded(page, "#code-in-image img")


def test_training_tab_shows_curves_and_evaluations(page) -> None:
    _tab(page, "Training")
    page.locator("#eval-summary", has_text="eval-").wait_for()
    page.locator("#curves canvas, #curves svg").first.wait_for()


def _raw(url: str, method: str, path: str, body: bytes | None = None, headers=None) -> int:
    """Status of a request sent as written (no URL clean-up, unlike a browser's)."""
    host, port = url.split("//")[1].strip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    status = conn.getresponse().status
    conn.close()
    return status


def test_hostile_requests_get_a_message_and_the_server_goes_on(
    page, server: str, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 40)
    page.set_input_files("#upload input[type=file]", corrupt)
    assert "unreadable" in _toast(page, "corrupt.png")
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 50 * 2**20)
    page.set_input_files("#upload input[type=file]", big)
    assert "maximum allowed size" in _toast(page, "big.png")
    boundary = "x" * 16
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n'.encode()
        + b"\0" * 50 * 2**20
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert _raw(server, "POST", "/gradio_api/upload", body, headers) == 413
    for path in [
        "/gradio_api/file=/etc/passwd",
        "/gradio_api/file=../../../../../etc/passwd",
        "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/gradio_api/file=/tmp/../etc/passwd",
        "/gradio_api/file/etc/passwd",
        f"/gradio_api/file={oasisvq.__file__}",
        "/gradio_api/file=https://example.org/x.png",
    ]:
        assert _raw(server, "GET", path) == 403, path
    _sample(page, 2)  # still answering


def test_four_browsers_sampling_at_once_all_get_their_images(browser, server: str) -> None:
    contexts, pages = zip(*(_open(browser, server) for _ in range(4)), strict=True)
    for pg in pages:
        _tab(pg, "Sample")
    for pg in pages:  # each click returns at once: the four requests queue together
        pg.click("#sample-btn")
    for pg in pages:
        _loaded(pg, "#samples img", 16)
    for c in contexts:
        c.close()


def test_the_page_asks_only_its_own_server(page, server: str) -> None:
    _sample(page, 1)
    others = [u for u in page.requested if not u.startswith((server, "data:", "blob:"))]
    assert others == []


def test_file_guard_allows_only_the_pages_folder(tmp_path: Path) -> None:
    _require()
    from oasisvq.studio.app import FileGuard

    guard = FileGuard(None, str(tmp_path))
    (tmp_path / "a.png").touch()
    assert guard.allowed(str(tmp_path / "a.png"))
    for bad in [
        "/etc/passwd",
        f"{tmp_path}/../x",
        f"{tmp_path}%2F..%2Fx",
        "a.png",
        "https://example.org/a.png",
        "//example.org/a.png",
        f"{tmp_path}x/a.png",
    ]:
        assert not guard.allowed(bad), bad
