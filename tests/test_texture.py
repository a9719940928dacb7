"""Scan texture: the fitted residual model, its scale, and ``--texture`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import write_tree
from volume_toy import make_volume_run

import oasisvq
from oasisvq.cli import main
from oasisvq.evaluate.texture import SCALES, crossing
from oasisvq.model.texture import BINS, fit_texture
from oasisvq.runs.texture import INFO, TENSORS


def _smooth(x: torch.Tensor, passes: int) -> torch.Tensor:
    """A box blur along the last axis, ``passes`` times (noise made low-frequency)."""
    for _ in range(passes):
        x = (x + x.roll(1, -1) + x.roll(-1, -1)) / 3
    return x


def test_fit_recovers_the_residual_std_by_intensity_and_its_spectrum() -> None:
    g = torch.Generator().manual_seed(0)
    mean = torch.full((40, 32, 32), 0.25)
    mean[:, :, 16:] = 0.75  # two intensities, in bins 8 and 24
    sigma = torch.where(mean < 0.5, 0.02, 0.06)
    white = torch.randn(mean.shape, generator=g)
    real = mean + sigma * white
    texture = fit_texture(real, mean)
    assert texture.std.shape == (BINS,) and texture.shape == (32, 32)
    assert texture.std[8] == pytest.approx(0.02, rel=0.05)
    assert texture.std[24] == pytest.approx(0.06, rel=0.05)
    assert texture.std[0] == texture.std[8] and texture.std[31] == texture.std[24]  # empty bins
    # smooth noise: power at low frequencies, little at the highest along the blurred axis
    smooth = fit_texture(mean + sigma * _smooth(white, 4) * 3, mean)
    assert smooth.amplitude[0, 1] > 5 * smooth.amplitude[0, -1]
    assert texture.amplitude[0, 1] < 2 * texture.amplitude[0, -1]  # white: flat


def test_apply_draws_the_fitted_texture_and_the_same_seed_the_same_one() -> None:
    g = torch.Generator().manual_seed(1)
    mean = torch.full((30, 24, 24, 24), 0.5)
    real = mean + 0.05 * _smooth(torch.randn(mean.shape, generator=g), 2) * 2
    texture = fit_texture(real, mean)
    drawn = texture.apply(mean[:4], seed=3)
    assert torch.equal(drawn, texture.apply(mean[:4], seed=3))
    assert not torch.equal(drawn, texture.apply(mean[:4], seed=4))
    torch.manual_seed(9)
    fresh = [texture.apply(mean[:1], seed=None) for _ in range(2)]
    after = torch.rand(3)
    torch.manual_seed(9)
    assert not torch.equal(*fresh) and torch.equal(after, torch.rand(3))  # global RNG untouched
    assert (drawn - mean[:4]).std() == pytest.approx(float((real - mean).std()), rel=0.1)
    # the field carries the residual's spatial correlation, not white noise
    field = drawn - mean[:4]
    corr = float((field * field.roll(1, -1)).mean() / field.var())
    real_corr = float(((real - mean) * (real - mean).roll(1, -1)).mean() / (real - mean).var())
    assert corr == pytest.approx(real_corr, abs=0.1) and corr > 0.5
    texture.scale = 0.0
    assert torch.equal(texture.apply(mean[:2], seed=0), mean[:2])
    texture.scale = 50.0
    wild = texture.apply(mean[:2], seed=0)
    assert wild.min() == 0 and wild.max() == 1  # clipped to the image range
    with pytest.raises(ValueError, match="fitted on"):
        texture.apply(torch.zeros(1, 8, 8, 8), seed=0)


def test_the_scale_is_where_the_curve_meets_the_target() -> None:
    scales = (0.0, 0.5, 1.0)
    assert crossing(scales, np.array([0.9, 0.8, 0.6]), 0.7) == pytest.approx(0.75)
    assert crossing(scales, np.array([0.9, 0.8, 0.6]), 0.8) == pytest.approx(0.5)
    assert crossing(scales, np.array([0.9, 0.8, 0.75]), 0.7) == 1.0  # never reached
    assert crossing(scales, np.array([0.6, 0.5, 0.4]), 0.7) == 0.0  # reached unscaled


@pytest.fixture(scope="module")
def run3d(tmp_path_factory, one_thread) -> Path:
    return make_volume_run(tmp_path_factory.mktemp("texture3d"))


def _fitted(run: Path, scale: float = 1.0) -> Path:
    """``run`` with a texture, drawn at ``scale`` (a few-epoch decoder may fit scale 0)."""
    if not (run / INFO).exists():
        assert main(["fit-texture", str(run), "--device", "cpu"]) == 0
    info = json.loads((run / INFO).read_text())
    (run / INFO).write_text(json.dumps({**info, "scale": scale}))
    return run


def test_fit_texture_writes_a_checked_texture_and_refits_only_with_force(
    run3d: Path, capsys
) -> None:
    assert main(["fit-texture", str(run3d), "--device", "cpu"]) == 0
    info = json.loads((run3d / INFO).read_text())
    curve = [info["nn_ssim_by_scale"][str(s)] for s in SCALES]
    assert info["vqvae"] == oasisvq.load(run3d).vqvae_fingerprint()
    assert info["items_fitted"] == 12 and info["subjects_measured"] == 12
    assert info["scale"] == pytest.approx(
        crossing(SCALES, np.array(curve), info["nn_ssim_real_mean"])
    )
    assert curve[0] > curve[-1]  # texture takes reconstructions away from the other subjects
    texture = oasisvq.load(run3d).texture()
    assert texture.shape == (16, 16, 16) and texture.scale == info["scale"]
    capsys.readouterr()
    assert main(["fit-texture", str(run3d), "--device", "cpu"]) == 5
    err = capsys.readouterr().err.strip()
    assert "a texture is fitted already" in err and "\n" not in err
    assert main(["fit-texture", str(run3d), "--device", "cpu", "--force"]) == 0


def test_sample_with_texture_keeps_the_codes_and_adds_the_texture(
    run3d: Path, tmp_path: Path
) -> None:
    _fitted(run3d)
    args = ["sample", str(run3d), "--n", "2", "--age", "70", "--sex", "F", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "mean")]) == 0
    assert main([*args, "--out", str(tmp_path / "tex"), "--texture"]) == 0
    codes = [np.load(tmp_path / d / "codes.npy") for d in ("mean", "tex")]
    assert np.array_equal(*codes)
    mean, tex = (
        nib.load(tmp_path / d / "volumes" / "sample_0000.nii.gz").get_fdata()
        for d in ("mean", "tex")
    )
    run = oasisvq.load(run3d)
    expected = run.texture().apply(torch.from_numpy(mean[None]).float(), seed=0)[0]
    assert np.allclose(tex, expected.numpy(), atol=1e-5)
    assert np.abs(tex - mean).mean() > 1e-3
    assert json.loads((tmp_path / "tex" / "sample.json").read_text())["texture"] is True


def test_evaluate_samples_with_texture_reports_copies_caught(run3d: Path, tmp_path: Path) -> None:
    _fitted(run3d)
    base = ["evaluate-samples", str(run3d), "--split", "validate", "--n", "6", "--device", "cpu"]
    base += ["--feature-epochs", "1", "--out", str(tmp_path / "figs")]
    assert main([*base, "--json", str(tmp_path / "m.json")]) == 0
    assert main([*base, "--json", str(tmp_path / "t.json"), "--texture"]) == 0
    mean, tex = (json.loads((tmp_path / f).read_text()) for f in ("m.json", "t.json"))
    assert "memorised_share_of_textured_copies" not in mean["memorisation"]
    assert 0 <= tex["memorisation"]["memorised_share_of_textured_copies"] <= 1
    assert tex["setup"]["sampling"]["texture"] is True
    assert tex["nn_ssim_mean"] != mean["nn_ssim_mean"]


def test_texture_errors_are_one_line_before_any_work(run3d: Path, tmp_path: Path, capsys) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "checkpoints"):
        src = run3d / f
        (bare / f).symlink_to(src, target_is_directory=src.is_dir())
    (bare / "priors").symlink_to(run3d / "priors", target_is_directory=True)
    out = tmp_path / "never"
    capsys.readouterr()
    assert main(["sample", str(bare), "--n", "1", "--out", str(out), "--texture"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no texture fitted" in err and "fit-texture" in err and "\n" not in err
    assert not out.exists()
    _fitted(run3d)
    for name in (INFO, TENSORS):
        (bare / name).write_bytes((run3d / name).read_bytes())
    (bare / TENSORS).write_bytes(b"not safetensors")
    assert main(["sample", str(bare), "--n", "1", "--out", str(out), "--texture"]) == 4
    assert "texture is damaged" in capsys.readouterr().err
    (bare / TENSORS).write_bytes((run3d / TENSORS).read_bytes())
    info = json.loads((run3d / INFO).read_text())
    (bare / INFO).write_text(json.dumps({**info, "vqvae": "another"}))
    assert main(["sample", str(bare), "--n", "1", "--out", str(out), "--texture"]) == 2
    assert "another decoder checkpoint" in capsys.readouterr().err
    assert not out.exists()


def test_a_2d_run_fits_its_texture_leaving_each_subject_out(tmp_path: Path) -> None:
    data = write_tree(tmp_path / "data", {"train": 24, "validate": 8}, size=32)
    run = tmp_path / "run"
    args = ["--preset", "seed", "--size", "32", "--batch-size", "8", "--amp", "off"]
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", *args]) == 0
    assert main(["fit-texture", str(run), "--device", "cpu"]) == 0
    info = json.loads((run / INFO).read_text())
    assert info["items_fitted"] == 24 and info["subjects_measured"] == 24
    texture = oasisvq.load(run).texture()
    assert texture.shape == (32, 32)
    assert 0 <= texture.scale <= SCALES[-1]
    texture.scale = 1.0
    images = torch.full((3, 32, 32), 0.5)
    assert (texture.apply(images, 0) - images).abs().mean() > 1e-3


def test_the_studio_draws_the_texture_only_where_one_is_fitted(run3d: Path, tmp_path) -> None:
    from oasisvq.studio import backend
    from oasisvq.studio import volumes as SV

    st = backend.open_run(_fitted(run3d))
    assert backend.has_texture(st)
    ask = {"prior": None, "conditions": {"age": 70, "sex": "M"}, "guidance": 2.0}
    ask.update(temperature=1.0, top_k=None, seed=5)
    mean, tex = (SV.sample_volumes(st, 2, **ask, texture=t) for t in (False, True))
    assert np.array_equal(mean.codes, tex.codes) and tex.settings["texture"] is True
    drawn = st.model.texture().apply(torch.from_numpy(mean.images), seed=5).numpy()
    np.testing.assert_allclose(tex.images, drawn, atol=1e-6)
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "checkpoints", "priors"):
        (bare / f).symlink_to(run3d / f, target_is_directory=(run3d / f).is_dir())
    assert not backend.has_texture(backend.open_run(bare))
