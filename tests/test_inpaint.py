"""``oasisvq inpaint`` and ``oasisvq sample`` with a maskgit prior, on a tiny VQ-VAE run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_sample_cli import FAST, SIZE, SMALL, K, _make_data, _make_vqvae_run, _run_cli

from oasisvq.sample.inpaint import cell_mask

GRID = 8  # the tiny run's 128 px images through 4 stride-2 levels


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VQ-VAE run with a maskgit and a transformer prior, one epoch each."""
    base = tmp_path_factory.mktemp("inpaint")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OASISVQ_CACHE", str(base / "cache"))
        _make_data(base / "data")
        _make_vqvae_run(base / "run", base / "data")
        for prior in ("maskgit", "transformer"):
            argv = ["train-prior", str(base / "run"), "--prior", prior, "--epochs", "1"]
            assert _run_cli(*argv, *SMALL, *FAST) == 0
    image = next((base / "data" / "validate" / "A").glob("*.png"))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[: SIZE // 2] = 255  # the top half: 4 of the 8 rows of cells
    Image.fromarray(mask).save(base / "mask.png")
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(base / "none.png")
    (base / "image.png").write_bytes(image.read_bytes())
    return base


def test_cell_mask_averages_the_pixels_of_each_cell() -> None:
    mask = np.zeros((8, 8), np.uint8)  # a 2x2 grid of cells of 4x4 pixels
    mask[:4, :4] = 255  # cell (0, 0): 16 of 16 pixels
    mask[:3, 4:7] = 255  # cell (0, 1): 9 of 16, more than half
    mask[4:6, :4] = 255  # cell (1, 0): 8 of 16, not more than half
    mask[4, 4] = 255  # cell (1, 1): 1 of 16
    expected = [[True, True], [False, False]]
    assert cell_mask(mask, 2).tolist() == expected
    assert cell_mask(mask.astype(np.float32) / 255, 2).tolist() == expected


@pytest.mark.parametrize("prior", ["maskgit", "transformer"])
def test_inpaint_writes_images_codes_and_settings(run: Path, prior: str) -> None:
    out = run / f"out-{prior}"
    argv = ["inpaint", str(run / "run"), str(run / "image.png"), "--mask", str(run / "mask.png")]
    assert _run_cli(*argv, "--out", str(out), "--prior", prior, "--n", "3", "--steps", "4") == 0
    info = json.loads((out / "inpaint.json").read_text())
    assert info["prior"] == prior and info["n"] == 3 and info["cells_resampled"] == 32
    for name in ("input.png", "reconstruction.png", "inpainted_2.png", "inpaint.png"):
        assert (out / name).stat().st_size > 200
    codes, kept = np.load(out / "codes.npy"), np.load(out / "input_codes.npy")
    mask = np.load(out / "cell_mask.npy")
    assert codes.shape == (3, GRID, GRID) and codes.max() < K
    assert mask[:4].all() and not mask[4:].any()
    assert (codes[:, ~mask] == kept[~mask]).all()  # cells outside the mask are kept exactly
    assert np.array_equal(
        np.asarray(Image.open(out / "input.png")), np.asarray(Image.open(run / "image.png"))
    )


def test_inpaint_errors_are_one_line(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["inpaint", str(run / "run"), str(run / "image.png"), "--out", str(run / "bad")]
    assert _run_cli(*argv, "--mask", str(run / "none.png"), "--prior", "maskgit") == 2
    assert "covers no code cell" in capsys.readouterr().err
    assert (
        _run_cli(*argv, "--mask", str(run / "mask.png"), "--prior", "maskgit", "--steps", "0") == 2
    )


def test_sample_draws_from_maskgit(run: Path) -> None:
    out = run / "samples"
    argv = ["sample", str(run / "run"), "--prior", "maskgit", "--n", "4", "--out", str(out)]
    assert _run_cli(*argv, "--device", "cpu") == 0
    codes = np.load(out / "codes.npy")
    assert codes.shape == (4, GRID, GRID) and codes.min() >= 0 and codes.max() < K


def test_evaluate_samples_reports_maskgit_bound(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate-samples runs on a masked prior; its NLL is the (finite) upper-bound estimate."""
    monkeypatch.setenv("OASISVQ_CACHE", str(run / "cache"))
    out = run / "eval.json"
    argv = ["evaluate-samples", str(run / "run"), "--prior", "maskgit", "--n", "8", "--steps", "3"]
    argv += ["--choice-temperature", "2.5", "--json", str(out), "--feature-epochs", "1"]
    assert _run_cli(*argv, "--device", "cpu") == 0
    r = json.loads(out.read_text())
    assert r["setup"]["prior_arch"] == "maskgit" and r["likelihood"]["kind"] == "upper bound"
    # what was measured says how it was drawn and how long the prior trained
    history = json.loads((run / "run" / "priors" / "maskgit" / "history.json").read_text())
    assert r["setup"]["steps"] == 3 and r["setup"]["prior_epochs"] == len(history) == 1
    assert r["setup"]["choice_temperature"] == r["setup"]["sampling"]["choice_temperature"] == 2.5
    assert r["setup"]["prior_train_minutes"] * 60 == pytest.approx(history[0]["epoch_seconds"])
    assert 0 < r["nll_bits_per_image"] < 2 * r["uniform_bits_per_image"]
    assert r["frechet_distance"] >= 0
