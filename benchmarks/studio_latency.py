"""How long OASISVQ Studio takes from a click to the answer on the page; one JSON result.

    python -m benchmarks.studio_latency --run runs/compact --out benchmarks/results/studio_latency.json

Starts ``oasisvq studio RUN`` (a subprocess, as a user would), opens it in Debian's
Chromium through Playwright and times, ``--repeats`` times each, from the click until
every image of the answer has been fetched and decoded by the browser: 16 samples
(Sample), a reconstruction of a data image (Reconstruct) and a surprise map (Surprise,
with the run's newest autoregressive prior: a masked prior has no per-cell surprise);
then ``--browsers`` browser contexts (separate users) clicking Sample at once, each
timed until its 16 samples are shown. On a run of whole volumes: 8 brains sampled at
age 80, female (Sample brains), and a subject reconstructed (Subjects), in one browser. Times include the browser's own work, so they are
what a user waits. The machine's load average is recorded before and after: on a shared
machine the other jobs' share of the cores is part of every number.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time

import oasisvq
from benchmarks.machine import machine_info, save_result
from oasisvq.studio import driver


def _timed(page, click: str, images: str, n: int) -> float:
    """Seconds from clicking ``click`` until ``n`` new images show under ``images``."""
    old = driver.sources(page, images)
    start = time.perf_counter()
    page.click(click)
    driver.wait_loaded(page, images, n, changed_from=old)
    return time.perf_counter() - start


def _summary(times: list[float]) -> dict:
    return {
        "median_s": statistics.median(times),
        "max_s": max(times),
        "all_s": [round(t, 3) for t in times],
    }


def _open(browser, url: str):
    page = browser.new_context(viewport=driver.VIEWPORT).new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    driver.wait_loaded(page, "#recon-output img")
    return page


def _enter(page, tab: str, field: str, value: int) -> None:
    """Open ``tab`` and enter ``value`` in its number input ``field``."""
    page.get_by_role("tab", name=tab, exact=True).click()
    box = page.locator(field)
    box.fill(str(value))
    box.press("Enter")


def autoregressive_prior(run: str) -> str | None:
    """The newest prior of ``run`` that a surprise map can use (not a masked one)."""
    r = oasisvq.load(run)
    fit = [n for n in r.priors() if r.prior_config(n)["prior"].get("arch") != "maskgit"]
    return fit[-1] if fit else None


def _single(browser, url: str, repeats: int, surprise: str | None) -> dict:
    """Reconstruct, Sample and (with an autoregressive prior ``surprise``) Surprise."""
    page = _open(browser, url)
    times: dict[str, list[float]] = {"reconstruction": [], "samples_16": []}
    if surprise is not None:
        times["surprise_map"] = []
        page.get_by_role("tab", name="Surprise", exact=True).click()
        page.click("#surprise-prior input")
        page.get_by_role("option", name=surprise, exact=True).click()
    for i in range(repeats):
        _enter(page, "Reconstruct", "#image-index input[type=number]", i)
        times["reconstruction"].append(_timed(page, "#recon-btn", "#recon-output img", 1))
        _enter(page, "Sample", "#seed input", i)
        times["samples_16"].append(_timed(page, "#sample-btn", "#samples img", 16))
        if surprise is not None:
            page.get_by_role("tab", name="Surprise", exact=True).click()
            times["surprise_map"].append(_timed(page, "#surprise-btn", "#surprise-map img", 1))
    page.context.close()
    return {k: _summary(v) for k, v in times.items()}


def _single_volumes(browser, url: str, repeats: int) -> dict:
    """A run of whole volumes: 8 brains sampled at age 80, female (Sample brains), and a
    subject of the data reconstructed (Subjects)."""
    from playwright.sync_api import expect

    page = browser.new_context(viewport=driver.VIEWPORT).new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    expect(page.locator("#sample3d-position input")).to_have_count(0)  # first update came
    driver.ask_brains(page, 80, "F", 8)
    times: dict[str, list[float]] = {"volumes_8": [], "subject_reconstruction": []}
    for i in range(repeats):
        _enter(page, "Sample brains", "#seed3d input", i)
        times["volumes_8"].append(_timed(page, "#sample3d-btn", "#volumes img", 8))
        page.get_by_role("tab", name="Subjects", exact=True).click()
        page.click("#subject3d input")
        page.get_by_role("option").nth(i).click()
        times["subject_reconstruction"].append(
            _timed(page, "#reconstruct3d-btn", "#recon3d-diff img", 1)
        )
    page.context.close()
    return {k: _summary(v) for k, v in times.items()}


def _together(browser, url: str, n_browsers: int, repeats: int) -> dict:
    """``n_browsers`` users click Sample at the same moment; each is timed."""
    pages = [_open(browser, url) for _ in range(n_browsers)]
    for page in pages:
        page.get_by_role("tab", name="Sample", exact=True).click()
    times, all_shown = [], []
    for _ in range(repeats):
        old = [driver.sources(p, "#samples img") for p in pages]
        start = time.perf_counter()
        for page in pages:  # a click returns at once: the requests queue together
            page.click("#sample-btn")
        done = []
        for page, before in zip(pages, old, strict=True):
            driver.wait_loaded(page, "#samples img", 16, changed_from=before)
            done.append(time.perf_counter() - start)
        times += done
        all_shown.append(max(done))
    for page in pages:
        page.context.close()
    return {"per_browser": _summary(times), "until_all_shown": _summary(all_shown)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--run",
        required=True,
        help="a trained run (the surprise map is timed with its newest autoregressive prior; "
        "without one it is left out)",
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--browsers", type=int, default=4)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    load_before = os.getloadavg()
    server = driver.Server(args.run)
    try:
        with sync_playwright() as p:
            browser = driver.launch(p)
            result = {
                "benchmark": "studio_latency",
                "command": shlex.join([sys.executable, *sys.argv]),
                "run": args.run,
                "repeats": args.repeats,
                **(
                    {"single_browser": _single_volumes(browser, server.url, args.repeats)}
                    if oasisvq.load(args.run).dims == 3
                    else {
                        "surprise_prior": autoregressive_prior(args.run),
                        "single_browser": _single(
                            browser, server.url, args.repeats, autoregressive_prior(args.run)
                        ),
                        f"browsers_{args.browsers}_at_once": _together(
                            browser, server.url, args.browsers, args.repeats
                        ),
                    }
                ),
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
                "machine": machine_info(),
            }
            browser.close()
    finally:
        server.stop()
    print(json.dumps(result, indent=2))
    if args.out:
        save_result(result, args.out)


if __name__ == "__main__":
    main()
