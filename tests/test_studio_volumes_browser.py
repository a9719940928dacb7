"""``oasisvq studio`` on a run of whole volumes, driven in a real browser (Playwright with
Debian's Chromium): brains sampled at an age and sex, shown as orthogonal slices and
downloaded as NIfTI; a subject of the data reconstructed. Needs what
``test_studio_browser`` needs, and is skipped (or, under CI, failed) as it is."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_studio_browser import TIMEOUT_MS, _require, serve
from volume_toy import brain, make_volume_run

from oasisvq.cli import main
from oasisvq.data.volumes3d import grid_affine
from oasisvq.studio import driver


@pytest.fixture(scope="module")
def volume_page(tmp_path_factory: pytest.TempPathFactory):
    """The page of a tiny 3D run, served by ``oasisvq studio`` in a subprocess."""
    _require()
    from playwright.sync_api import sync_playwright

    base = tmp_path_factory.mktemp("studio3d")
    cache = {"OASISVQ_CACHE": str(base / "cache")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OASISVQ_CACHE", cache["OASISVQ_CACHE"])
        run = make_volume_run(base)
        assert main(["fit-texture", str(run), "--device", "cpu"]) == 0
    info = json.loads((run / "texture.json").read_text())
    (run / "texture.json").write_text(json.dumps({**info, "scale": 1.0}))  # drawn visibly
    server = serve(run, cache)
    with sync_playwright() as p:
        browser = driver.launch(p)
        page = browser.new_context(viewport=driver.VIEWPORT).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server.url)
        page.locator("#header", has_text="16x16x16 volumes at 2 mm").wait_for()
        yield page
        browser.close()
    assert server.stop() == 0, server.log()


def test_brains_sampled_at_an_age_and_sex_come_as_views_and_nifti(volume_page) -> None:
    pg = volume_page
    pg.get_by_role("tab", name="Sample brains", exact=True).click()
    from playwright.sync_api import expect

    # the page's first update (the prior's inputs) has come when it hides the slice
    # position, which this prior does not take (the guidance slider starts at 5 anyway)
    expect(pg.locator("#sample3d-position input")).to_have_count(0)
    expect(pg.locator("#guidance3d input[type=number]")).to_have_value("5")
    # after it, an empty age is unknown, not 0
    expect(pg.locator("#sample3d-age input")).to_have_value("")
    driver.ask_brains(pg, 80, "F", 3)
    pg.check("#texture3d input")
    pg.click("#sample3d-btn")
    driver.wait_loaded(pg, "#volumes img", 3)
    expect(pg.get_by_role("button", name="Download NIfTI (ZIP)")).to_be_enabled()
    pg.locator("#volumes button.thumbnail-item").nth(1).click()
    pg.click("#nearest3d-btn")
    driver.wait_loaded(pg, "#nearest3d-image img")
    text = pg.locator("#nearest3d-text", has_text="SSIM-3D").inner_text()
    assert re.search(r"training volume #\d+ \(IXI\d+.*\): SSIM-3D -?\d\.\d{3} to sample 1", text)
    with pg.expect_download() as got:
        pg.click("#nifti-zip")
    with zipfile.ZipFile(got.value.path()) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".nii.gz"))
        assert names == [f"volumes/sample_{i:03d}.nii.gz" for i in range(3)]
        settings = z.read("settings.json").decode()
        folder = Path(got.value.path()).parent / "unzipped"
        z.extractall(folder)
    assert '"age": 80' in settings and '"sex": "F"' in settings and '"texture": true' in settings
    img = nib.load(folder / names[0])
    assert img.shape == (16, 16, 16)
    np.testing.assert_allclose(img.affine, grid_affine((16, 16, 16), 2.0))


def test_a_subject_is_reconstructed_with_its_ssim(volume_page) -> None:
    pg = volume_page
    pg.get_by_role("tab", name="Subjects", exact=True).click()
    pg.click("#reconstruct3d-btn")
    metrics = pg.locator("#recon3d-metrics", has_text="SSIM-3D")
    metrics.wait_for()
    assert re.search(r"\(validate\): SSIM-3D -?\d\.\d{3}, PSNR \d+\.\d{2} dB", metrics.inner_text())
    for view in ("original", "output", "diff"):
        driver.wait_loaded(pg, f"#recon3d-{view} img")


def test_an_uploaded_scan_is_reconstructed_and_downloadable(volume_page, tmp_path: Path) -> None:
    pg = volume_page
    pg.get_by_role("tab", name="Subjects", exact=True).click()
    volume, _ = brain(50.0, "M", np.random.default_rng(7))
    scan = tmp_path / "my-scan.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 2.0, 1.0])), scan)
    pg.set_input_files("#upload3d input[type=file]", scan)
    metrics = pg.locator("#recon3d-metrics", has_text="my-scan.nii.gz")
    metrics.wait_for()
    assert re.search(r"SSIM-3D -?\d\.\d{3}", metrics.inner_text())
    # a brain mask uploaded next reconstructs the scan again, masked
    half = np.zeros(volume.shape, np.uint8)
    half[: volume.shape[0] // 2] = 1
    mask = tmp_path / "half.nii.gz"
    nib.save(nib.Nifti1Image(half, np.diag([2.0, 2.0, 2.0, 1.0])), mask)
    pg.set_input_files("#upload3d-mask input[type=file]", mask)
    masked = pg.locator("#recon3d-metrics", has_text="brain mask half.nii.gz")
    masked.wait_for()
    # an Analyze pair (as OASIS ships them), both files in one upload, added to the box
    # after the NIfTI file: the newest volume is reconstructed, read as nibabel reads it
    nib.save(nib.AnalyzeImage(volume, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "oasis.hdr")
    pg.set_input_files(
        "#upload3d input[type=file]", [tmp_path / "oasis.hdr", tmp_path / "oasis.img"]
    )
    pair = pg.locator("#recon3d-metrics", has_text="oasis.hdr (brain mask half.nii.gz)")
    shown = [pair.inner_text()]
    analyze = nib.load(tmp_path / "oasis.hdr")  # Analyze holds no orientation: nibabel's default
    same = nib.Nifti1Image(np.asarray(analyze.dataobj), analyze.affine)
    nib.save(same, tmp_path / "as-nifti.nii.gz")
    pg.set_input_files("#upload3d input[type=file]", tmp_path / "as-nifti.nii.gz")
    again = pg.locator("#recon3d-metrics", has_text="as-nifti.nii.gz (brain mask half.nii.gz)")
    shown.append(again.inner_text())
    scores = [re.search(r"SSIM-3D .*", text).group() for text in shown]
    assert scores[0] == scores[1]
    with pg.expect_download() as got:
        pg.click("#recon3d-nifti")
    assert got.value.suggested_filename.endswith("_recon.nii.gz")
    saved = tmp_path / got.value.suggested_filename
    got.value.save_as(saved)
    recon = nib.load(saved)
    assert recon.shape == (16, 16, 16) and np.isfinite(recon.get_fdata()).all()
