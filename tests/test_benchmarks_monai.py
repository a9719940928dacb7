"""benchmarks/monai_peer.py: MONAI's VQ-VAE shaped to each preset's code grid, in 2D and
3D, and one whole comparison on tiny synthetic brains (both models in their own process)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from volume_toy import TINY3D, write_brains

from benchmarks import monai_peer
from benchmarks.budget_train import own_stream
from benchmarks.monai_adapter import MONAI_DEFAULT_WIDTHS, MonaiVQVAE
from oasisvq.data.volumes3d import VolumeSet
from oasisvq.model.presets import get_preset
from oasisvq.model.vqvae import VQVAE
from oasisvq.train.vqvae_run import train_vqvae
from oasisvq.train.vqvae_task import VQVAETask

SMALL = (16, 24, 32)  # a multiple of 8 on every axis, each side different


@pytest.mark.parametrize(
    ("preset", "shape", "overrides"),
    [
        ("seed", "default", {}),
        ("hifi", "matched", {}),
        ("compact3d", "default", {"volume_shape": SMALL}),
        ("compact3d", "matched", {"volume_shape": SMALL}),
        ("hifi3d", "default", {"volume_shape": SMALL}),
    ],
)
def test_monai_gives_the_preset_its_code_grid_one_level_per_width(
    preset: str, shape: str, overrides: dict, one_thread
) -> None:
    cfg = get_preset(preset, **overrides)
    torch.manual_seed(0)
    model = MonaiVQVAE(cfg, shape).eval()
    levels = len(cfg.widths)
    assert model.monai_config["spatial_dims"] == cfg.dims
    assert len(model.monai_config["channels"]) == levels
    if shape == "matched":
        assert model.monai_config["channels"] == cfg.widths
    else:  # MONAI's defaults, cut or extended with their last width
        assert model.monai_config["channels"] == (*MONAI_DEFAULT_WIDTHS, 192)[:levels]
    x = torch.rand(2, 1, *cfg.input_shape)
    out = model(x)
    assert out.recon.shape == x.shape
    assert out.codes.shape == (2, *cfg.grid_shape)
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < cfg.quantizer.codebook_size
    assert torch.equal(model.encode(x), out.codes)  # MONAI's own index_quantize
    assert VQVAE(cfg).eval()(x).codes.shape == out.codes.shape  # ours: the same grid


def test_random_changes_of_volumes_come_from_their_own_stream(one_thread) -> None:
    cfg = get_preset("compact3d", **TINY3D)
    assert cfg.augment
    empty = VolumeSet.empty(cfg.volume_shape, cfg.voxel_mm)
    task = VQVAETask(VQVAE(cfg), empty, None, 2)
    batch = torch.randint(0, 256, (2, 1, *cfg.volume_shape), dtype=torch.uint8)
    device = torch.device("cpu")
    quiet = own_stream(task, seed=3)
    first = [quiet(batch, device) for _ in range(2)]
    busy = own_stream(task, seed=3)
    second = []
    for _ in range(2):
        torch.rand(1000)  # another user of torch's generator (a quantizer's restarts)
        state = torch.get_rng_state()
        second.append(busy(batch, device))
        assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1])  # the stream moves on from batch to batch
    plain = batch.float() / 255
    assert not torch.equal(first[0], plain)  # the volumes were changed


@pytest.mark.parametrize(
    ("preset", "shape", "message"),
    [("seed", ["16", "16", "16"], "is 2D"), ("compact3d", ["20", "16", "16"], "multiple of 8")],
)
def test_a_volume_shape_the_preset_cannot_take_is_refused(
    preset: str, shape: list[str], message: str, tmp_path: Path, capsys
) -> None:
    argv = ["--preset", preset, "--epochs", "1", "--volume-shape", *shape]
    with pytest.raises(SystemExit):
        monai_peer.main([*argv, "--out", str(tmp_path / "r.json")])
    assert message in capsys.readouterr().err


def test_the_comparison_of_3d_presets_trains_and_measures_whole_volumes(
    tmp_path: Path, benchmark_workers: None
) -> None:
    data = tmp_path / "brains"
    write_brains(data, n_train=4, n_validate=2)
    out = tmp_path / "monai3d.json"
    argv = ["--data", str(data), "--preset", "compact3d", "--volume-shape", "16", "16", "16"]
    argv += ["--epochs", "1", "--threads", "1", "--device", "cpu", "--out", str(out)]
    # fp32: on a bf16 CPU, MONAI's 192-channel convs at this toy's 2x2x2 level can get
    # non-finite weight gradients under autocast (not this test's subject)
    argv += ["--amp", "off"]
    assert monai_peer.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["dims"] == 3 and result["unit"] == "volume"
    opts = result["data_options"]
    assert opts["dims"] == 3 and opts["volume_shape"] == [16, 16, 16] and opts["mask"] == "auto"
    for who in ("ours", "peer"):
        r = result[who]
        assert r["code_grid"] == [2, 2, 2]
        assert r["train"]["images"] == 4 and r["train"]["steps"] == 1  # one batch of 4
        assert r["train"]["augment"] and not r["train"]["config"]["channels_last"]
        e = r["eval"]
        assert e["n_volumes"] == 2 and e["dims"] == 3 and e["grid"] == [2, 2, 2]
        for key in ("ssim", "ms_ssim", "psnr", "ssim_brain", "psnr_brain"):
            assert np.isfinite(e[f"{key}_mean"]), (who, key)
        assert e["images_per_second"] > 0 and r["train"]["peak_rss_mib"] > 0
    peer = result["peer"]
    assert peer["monai_config"]["spatial_dims"] == 3
    assert peer["monai_config"]["channels"] == list(MONAI_DEFAULT_WIDTHS)
    assert peer["index_quantize_matches_adapter"] is True
    ratios = result["ratios_ours_over_monai"]
    ssim = result["ours"]["eval"]["ssim_brain_mean"] / peer["eval"]["ssim_brain_mean"]
    assert ratios["ssim_brain"] == pytest.approx(ssim)
    assert out.with_suffix(".png").stat().st_size > 0


def test_an_already_trained_3d_run_is_measured_beside_the_peer(
    tmp_path: Path, benchmark_workers: None
) -> None:
    data = tmp_path / "brains"
    write_brains(data, n_train=4, n_validate=2)
    run = tmp_path / "run"
    train_vqvae(str(data), run, preset="compact3d", epochs=1, model_overrides=TINY3D)
    out = tmp_path / "monai3d.json"
    argv = ["--data", str(data), "--preset", "compact3d", "--ours-run", str(run)]
    argv += ["--volume-shape", "16", "16", "16", "--monai-shape", "matched", "--epochs", "1"]
    argv += ["--threads", "1", "--device", "cpu", "--amp", "off", "--out", str(out)]
    assert monai_peer.main(argv) == 0
    result = json.loads(out.read_text())
    ours, peer = result["ours"], result["peer"]
    assert ours["run"] == str(run) and ours["train"]["epochs_started"] == 1
    assert ours["code_grid"] == [4, 4, 4] and peer["code_grid"] == [2, 2, 2]  # TINY3D: 2 levels
    assert ours["eval"]["n_volumes"] == peer["eval"]["n_volumes"] == 2
    assert np.isfinite(ours["eval"]["ssim_brain_mean"])
    assert peer["monai_config"]["channels"] == list(get_preset("compact3d").widths)
