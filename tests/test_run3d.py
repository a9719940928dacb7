"""Whole volumes end to end: the 3D layers, a 3D VQ-VAE trained on tiny synthetic
brains, a prior conditioned on age and sex, NIfTI samples and reconstructions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from volume_toy import TINY3D, brain, write_brains

from oasisvq import Run, metrics
from oasisvq.cli import main
from oasisvq.data.torch_dataset import to_uint8
from oasisvq.data.volumes3d import grid_affine
from oasisvq.errors import ConfigError
from oasisvq.evaluate.volume_samples import nearest_volumes
from oasisvq.model.discriminator import PatchDiscriminator
from oasisvq.model.networks import VoxelShuffle
from oasisvq.model.presets import PRESETS, get_preset
from oasisvq.model.vqvae import VQVAE
from oasisvq.prior.base import SamplingOptions
from oasisvq.prior.config import PRIORS, get_prior_config
from oasisvq.prior.registry import build_prior
from oasisvq.runs import checkpoint
from oasisvq.train.prior_run import VOLUME_BATCH, train_prior
from oasisvq.train.vqvae_run import train_vqvae

PRIOR = {"d_model": 32, "n_layers": 1, "n_heads": 2, "batch_size": 8}


def test_voxel_shuffle_is_pixel_shuffle_in_2d_and_interleaves_in_3d() -> None:
    x = torch.randn(2, 12, 3, 5)
    assert torch.equal(VoxelShuffle(2, 2)(x), nn.PixelShuffle(2)(x))
    v = torch.randn(1, 8, 2, 3, 4)
    out = VoxelShuffle(2, 3)(v)
    assert out.shape == (1, 1, 4, 6, 8)
    for c in range(8):  # channel c = (i, j, k) fills voxel offset (i, j, k) of each 2^3 block
        i, j, k = c // 4, (c // 2) % 2, c % 2
        assert torch.equal(out[0, 0, i::2, j::2, k::2], v[0, c])


@pytest.mark.parametrize("kind", ["vq", "fsq"])
def test_a_3d_vqvae_maps_volumes_to_3d_code_grids(kind: str) -> None:
    levels = {"kind": "fsq", "levels": (4, 4)} if kind == "fsq" else {}
    overrides = {**TINY3D, **levels, "codebook_size": None if levels else 16}
    cfg = get_preset("compact3d", **overrides)
    model = VQVAE(cfg).eval()
    x = torch.rand(2, 1, *cfg.volume_shape)
    out = model(x)
    assert out.recon.shape == x.shape
    assert out.codes.shape == (2, *cfg.grid_shape) == (2, 4, 4, 4)
    assert torch.allclose(model.decode(out.codes), out.recon.clamp(0, 1), atol=1e-5)
    assert cfg.bits_per_image == 64 * 4


def test_3d_presets_state_their_grid_and_bits_per_volume() -> None:
    for name in ("compact3d", "hifi3d"):
        cfg = PRESETS[name]
        assert cfg.dims == 3 and cfg.voxel_mm == 2.0 and len(cfg.grid_shape) == 3
        assert cfg.bits_per_image == np.prod(cfg.grid_shape) * np.log2(cfg.quantizer.codebook_size)
    assert PRESETS["compact3d"].grid_shape == (12, 14, 12)
    assert PRESETS["hifi3d"].grid_shape == (24, 28, 24)
    with pytest.raises(ConfigError, match="multiple of 8"):
        get_preset("compact3d", volume_shape=(20, 16, 16))
    with pytest.raises(ConfigError, match="2D only"):
        get_preset("seed", dims=3, volume_shape=(16, 16, 16))


def test_presets_json_lists_dims_and_3d_grids(capsys) -> None:
    assert main(["presets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["compact3d"]["dims"] == 3 and rows["compact3d"]["grid"] == [12, 14, 12]
    assert rows["compact3d"]["bits_per_image"] == 12 * 14 * 12 * 8
    assert rows["mid"]["dims"] == 2 and rows["mid"]["grid"] == 16


def test_3d_transformer_sees_positions_on_all_three_axes() -> None:
    cfg = get_prior_config("transformer", condition="age,sex", **PRIOR)
    cfg.codebook_size, cfg.grid = 16, (2, 3, 4)
    prior = build_prior(cfg).eval()
    pos = prior.positions().view(2, 3, 4, -1)
    assert torch.allclose(
        pos[1, 2, 3], prior.row.weight[1] + prior.col.weight[2] + prior.depth.weight[3]
    )
    codes = torch.randint(0, 16, (3, 2, 3, 4))
    cond = {"age": torch.tensor([30.0, 60.0, float("nan")]), "sex": torch.tensor([0, 1, -1])}
    full = prior(codes, cond)
    assert full.shape == (3, 2, 3, 4, 16)
    assert torch.allclose(prior.forward_cached(codes, cond), full, atol=1e-5)
    other = dict(cond, sex=torch.tensor([1, 0, -1]))
    assert not torch.allclose(prior(codes, other)[:2], full[:2])  # sex is read
    assert torch.allclose(prior(codes, other)[2], full[2])  # unknown stays unknown


@pytest.fixture(scope="module")
def run3d(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brains")
    write_brains(root, n_train=12, n_validate=4, n_test=2)
    run = tmp_path_factory.mktemp("runs") / "r3d"
    train_vqvae(str(root), run, preset="compact3d", epochs=4, model_overrides=TINY3D, batch_size=4)
    train_prior(run, prior="transformer", condition="age,sex", epochs=2, options=PRIOR)
    return run


def test_training_a_3d_run_saves_a_3d_config_and_codes(run3d: Path) -> None:
    run = Run.open(run3d)
    assert run.dims == 3 and run.data_options.dims == 3
    assert run.data_options.volume_shape == (16, 16, 16)
    train = run.split("train")
    codes = run.codes("train", train)
    assert codes.codes.shape == (12, 4, 4, 4)
    assert set(codes.sexes) == {0, 1} and np.isfinite(codes.ages).all()
    prior = run.prior("transformer")
    assert prior.cfg.grid == (4, 4, 4) and prior.cfg.condition == ("age", "sex")


def test_3d_evaluation_reports_whole_volume_and_brain_measures(run3d: Path, tmp_path) -> None:
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run3d), "--split", "test", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["n_volumes"] == 2 and summary["dims"] == 3 and summary["grid"] == [4, 4, 4]
    for key in ("ssim_mean", "ms_ssim_mean", "psnr_mean", "ssim_brain_mean", "psnr_brain_mean"):
        assert np.isfinite(summary[key]), key
    assert 0 < summary["codes_used"] <= 16
    assert (run3d / "eval-test" / "reconstructions.png").stat().st_size > 0


def test_sampling_a_conditioned_3d_prior_writes_nifti_on_the_preset_grid(
    run3d: Path, tmp_path
) -> None:
    out = tmp_path / "samples"
    args = ["sample", str(run3d), "--age", "80", "--sex", "f", "--n", "3", "--out", str(out)]
    assert main(args) == 0
    info = json.loads((out / "sample.json").read_text())
    assert info["age"] == 80 and info["sex"] == "F"
    files = sorted((out / "volumes").glob("sample_*.nii.gz"))
    assert len(files) == 3 and len(list((out / "volumes").glob("sample_*.png"))) == 3
    img = nib.load(str(files[0]))
    assert img.shape == (16, 16, 16) and nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert np.allclose(img.affine, grid_affine((16, 16, 16), 2.0))
    data = np.asarray(img.dataobj, np.float32)
    assert 0 <= data.min() and data.max() <= 1 and data.std() > 0
    assert np.load(out / "codes.npy").shape == (3, 4, 4, 4)
    # nilearn draws it in RAS: its sagittal cut at x = 0 mm is the volume's middle x slice
    from nilearn import plotting  # a heavy import, for this check alone

    display = plotting.plot_anat(str(files[0]), display_mode="ortho", cut_coords=(0, 0, 0))
    assert set(display.axes) == {"x", "y", "z"}
    display.close()
    assert np.allclose(img.affine @ [7.5, 7.5, 7.5, 1], [0, 0, 0, 1])


def test_the_sex_condition_is_checked_before_drawing(run3d: Path, tmp_path, capsys) -> None:
    code = main(["sample", str(run3d), "--sex", "X", "--n", "1", "--out", str(tmp_path / "s")])
    assert code == 2 and "--sex" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    run = Run.open(run3d)
    a, _ = run.sample(2, "transformer", SamplingOptions(seed=1), {"age": 30, "sex": "M"})
    assert a.shape == (2, 16, 16, 16)


def test_reconstruct_one_scan_overlays_it(run3d: Path, tmp_path) -> None:
    run = Run.open(run3d)
    scan = Path(run.split("test").paths[0])
    out = tmp_path / "recon"
    assert main(["reconstruct", str(run3d), str(scan), "--out", str(out)]) == 0
    stem = scan.name.removesuffix(".nii.gz")
    recon = nib.load(str(out / f"{stem}_recon.nii.gz"))
    given = nib.load(str(out / f"{stem}_input.nii.gz"))
    assert recon.shape == (16, 16, 16) and np.allclose(recon.affine, given.affine)
    # the output grid's centre is the source scan's brain centre, in world mm
    src = nib.load(str(scan))
    world_centre = recon.affine @ np.array([7.5, 7.5, 7.5, 1.0])
    src_centre = src.affine @ np.array([*(np.array(src.shape) - 1) / 2, 1.0])
    assert np.abs(world_centre[:3] - src_centre[:3]).max() <= 2 * 2.0
    assert np.load(out / f"{stem}_codes.npy").shape == (4, 4, 4)


def test_evaluate_samples_of_a_3d_prior_measures_conditioning(run3d: Path, tmp_path) -> None:
    out = tmp_path / "eval.json"
    args = ["evaluate-samples", str(run3d), "--n", "6", "--split", "test"]
    assert main([*args, "--feature-epochs", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["setup"]["n_samples"] == 6 and r["setup"]["grid"] == [4, 4, 4]
    assert r["nll_bits_per_image"] > 0 and r["uniform_bits_per_image"] == 64 * 4
    assert 0 <= r["memorised_share"] <= 1 and r["frechet_distance"] >= 0
    mem, div = r["memorisation"], r["diversity"]
    assert 0 <= mem["memorised_share_recon_space"] <= 1
    assert 0 <= mem["exact_code_copy_share"] <= 1
    # the interval is over the 6 samples; real volumes are judged against the others
    assert mem["memorised_share_ci95"][1] - mem["memorised_share_ci95"][0] > 0.3
    assert 0 <= r["memorised_share_of_real"] <= 1
    assert 0 < div["real_reconstructions"] <= 1
    # the decoded held-out volumes are cached beside their codes for the next call
    assert (run3d / "priors" / "recon_test.npz").is_file()
    for key in ("age_correlation", "age_mae", "sex_accuracy"):
        assert key in r and f"{key}_real" in r
    assert 0 <= r["sex_accuracy"] <= 1 and r["age_mae"] >= 0
    assert (run3d / "features3d").is_dir()  # the age/sex network is kept for the next call


def test_finetune_decoder_of_a_3d_run_trains_against_a_3d_discriminator(
    run3d: Path, tmp_path
) -> None:
    disc = PatchDiscriminator(width=4, dims=3)
    assert disc(torch.rand(2, 1, 16, 24, 16)).shape == (2, 1, 2, 3, 2)  # one logit per patch
    out = tmp_path / "adv"
    args = ["finetune-decoder", str(run3d), "--out", str(out), "--epochs", "1"]
    assert main([*args, "--adversarial-start", "1", "--batch-size", "4", "--amp", "off"]) == 0
    before = load_file(str(checkpoint.latest(run3d) / "model.safetensors"))
    after = load_file(str(checkpoint.latest(out) / "model.safetensors"))
    for k, v in before.items():
        if k.startswith(("encoder.", "quantizer.")):
            assert torch.equal(v, after[k]), k
    assert any(not torch.equal(v, after[k]) for k, v in before.items() if k.startswith("decoder."))
    assert after["discriminator.0.weight"].shape == (16, 1, 4, 4, 4)
    rows = json.loads((out / "history.json").read_text())
    assert rows[-1]["train_disc"] > 0 and "train_gen" in rows[-1]
    # every volume keeps its codes, so the conditional prior and the age/sex network carry over
    parent, tuned = Run.open(run3d), Run.open(out)
    volumes = np.asarray(parent.split("validate").volumes)
    assert torch.equal(parent.encode(volumes), tuned.encode(volumes))
    assert tuned.prior("transformer").cfg.condition == ("age", "sex")
    assert (out / "features3d").is_dir() == (run3d / "features3d").is_dir()
    a, _ = tuned.sample(2, "transformer", SamplingOptions(seed=1), {"age": 70, "sex": "F"})
    b, _ = parent.sample(2, "transformer", SamplingOptions(seed=1), {"age": 70, "sex": "F"})
    assert a.shape == b.shape == (2, 16, 16, 16) and not torch.equal(
        a, b
    )  # same codes, new decoder


def test_2d_only_commands_refuse_a_3d_run_in_one_line(run3d: Path, tmp_path, capsys) -> None:
    image = tmp_path / "slice.png"
    image.write_bytes(b"")  # never read: the run is refused first
    args = ["inpaint", str(run3d), str(image), "--mask", str(image), "--out", str(tmp_path / "i")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "whole volumes" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "i").exists()


def test_a_mirrored_3d_prior_also_trains_on_left_right_flipped_volumes(run3d: Path) -> None:
    options = {**PRIOR, "mirror": True}
    del options["batch_size"]  # the default of a 3D run: at most VOLUME_BATCH grids
    train_prior(run3d, prior="transformer", name="mirrored", epochs=1, options=options)
    saved = json.loads((run3d / "priors" / "mirrored" / "config.json").read_text())
    assert saved["train"]["batch_size"] == VOLUME_BATCH < PRIORS["transformer"].batch_size
    run = Run.open(run3d)
    volumes = run.split("train").volumes
    with np.load(run3d / "priors" / "codes_train-mirrored.npz") as cached:
        mirrored = cached["codes"]
    assert mirrored.shape == (12, 4, 4, 4)
    flipped = np.ascontiguousarray(volumes[:, ::-1])  # RAS: x runs left to right
    assert np.array_equal(mirrored, run.encode(flipped).numpy())
    assert not np.array_equal(mirrored, run.encode(np.asarray(volumes)).numpy())


def test_the_memorisation_floor_measures_decoded_held_out_codes_by_the_samples_rule(
    run3d: Path,
) -> None:
    from benchmarks import memorisation_floor

    args = argparse.Namespace(
        runs=[str(run3d), str(run3d)], data=None, split="validate", texture=False
    )
    result = memorisation_floor.floor(args)
    run = Run.open(run3d)
    train, held = run.split("train").volumes, run.split("validate").volumes
    _, real = nearest_volumes(held, train)
    threshold = np.percentile(real, 99)
    assert result["n_held_out"] == 4 and result["nn_ssim_real_p99"] == pytest.approx(threshold)
    # the held-out volumes through the quantizer, as a prior drawing them would decode them
    decoded = to_uint8(run.reconstruct(np.asarray(held, np.float32) / 255))
    _, nn = nearest_volumes(decoded, train)
    first, second = result["rows"]
    assert first == second and first["setup"]["preset"] == "compact3d"
    assert first["nn_ssim_mean"] == pytest.approx(nn.mean())
    assert first["memorised_share"] == pytest.approx((nn > threshold).mean())
    low, high = first["memorised_share_ci95"]
    assert low <= first["memorised_share"] <= high
    # with the texture drawn: the same grids decoded, then the run's texture on them
    assert main(["fit-texture", str(run3d), "--device", "cpu", "--force"]) == 0
    info = json.loads((run3d / "texture.json").read_text())
    (run3d / "texture.json").write_text(json.dumps({**info, "scale": 1.0}))  # drawn visibly
    textured = memorisation_floor.floor(argparse.Namespace(**{**vars(args), "texture": True}))
    row = textured["rows"][0]
    drawn = run.texture().apply(run.reconstruct(np.asarray(held, np.float32) / 255), seed=0)
    _, nn_textured = nearest_volumes(to_uint8(drawn), train)
    assert row["setup"]["texture"] is True and not first["setup"]["texture"]
    assert row["nn_ssim_mean"] == pytest.approx(nn_textured.mean())
    assert row["nn_ssim_mean"] != pytest.approx(first["nn_ssim_mean"])


def test_the_studio_samples_shows_and_exports_volumes_of_a_3d_run(run3d: Path, tmp_path) -> None:
    from oasisvq.studio import backend
    from oasisvq.studio import volumes as SV

    st = backend.open_run(run3d)
    assert backend.overview(st)["grid"] == [4, 4, 4]
    s = SV.sample_volumes(st, 2, "transformer", {"age": 80, "sex": "F"}, 3.0, 1.0, None, 5)
    assert s.images.shape == (2, 16, 16, 16) and s.codes.shape == (2, 4, 4, 4)
    again = SV.sample_volumes(st, 2, "transformer", {"age": 80, "sex": "F"}, 3.0, 1.0, None, 5)
    assert np.array_equal(s.codes, again.codes)  # the same seed draws the same
    # the views are the three centre slices, side by side
    view = SV.views(s.images[0])
    assert view.shape == (16, 16 * 3 + 2 * SV.GAP)
    np.testing.assert_array_equal(view[:, :16], s.images[0][8].T[::-1])  # sagittal
    np.testing.assert_array_equal(view[:, -16:], s.images[0][:, :, 8].T[::-1])  # axial
    zipped = SV.export_nifti_zip(st, s, tmp_path / "v.zip")
    import zipfile

    with zipfile.ZipFile(zipped) as z:
        names = set(z.namelist())
        assert {"volumes/sample_000.nii.gz", "volumes/sample_001.nii.gz", "codes.npy"} <= names
        z.extract("volumes/sample_001.nii.gz", tmp_path)
        assert json.loads(z.read("settings.json"))["conditions"] == {"age": 80, "sex": "F"}
    img = nib.load(tmp_path / "volumes" / "sample_001.nii.gz")
    np.testing.assert_allclose(img.affine, grid_affine((16, 16, 16), 2.0))
    np.testing.assert_allclose(img.get_fdata(), s.images[1], atol=1e-6)
    # a training volume's nearest training volume is itself
    train = Run.open(run3d).split("train")
    copy = np.asarray(train.volumes[5], np.float32) / 255
    idx, score, found, label = SV.nearest_training(st, copy)
    assert idx == 5 and score == pytest.approx(1.0, abs=1e-5) and np.allclose(found, copy)
    assert label == SV.subjects(st, "train")[5]
    with pytest.raises(ConfigError, match="9 volumes: ask for 1 to 8"):
        SV.sample_volumes(st, 9, None, None, 1.0, 1.0, None, 0)


def test_the_studio_reconstructs_a_subject_of_a_3d_run(run3d: Path) -> None:
    from oasisvq.studio import backend
    from oasisvq.studio import volumes as SV

    st = backend.open_run(run3d)
    assert set(SV.volume_splits(st)) == {"train", "validate", "test"}
    labels = SV.subjects(st, "validate")
    data = Run.open(run3d).split("validate")
    assert len(labels) == 4 and labels[0].startswith(data.subjects[0])
    assert labels[0].endswith(("F", "M")) and " y " in labels[0]
    r = SV.reconstruct_subject(st, "validate", 1)
    assert r["label"] == f"{labels[1]} (validate)"
    np.testing.assert_allclose(r["affine"], data.affines[1])
    original = np.asarray(data.volumes[1], np.float32) / 255
    np.testing.assert_allclose(r["original"], original)
    expected = Run.open(run3d).reconstruct(original[None])[0].clamp(0, 1).numpy()
    np.testing.assert_allclose(r["reconstruction"], expected, atol=1e-5)
    x, y = (torch.from_numpy(v)[None, None] for v in (original, expected))
    assert r["ssim"] == pytest.approx(float(metrics.ssim3d(x, y)[0]), abs=1e-5)
    assert r["codes"].shape == (4, 4, 4)
    with pytest.raises(ConfigError, match="validate has 4 volumes"):
        SV.reconstruct_subject(st, "validate", 4)


def test_the_studio_reconstructs_an_uploaded_scan_and_refuses_a_bad_one(
    run3d: Path, tmp_path
) -> None:
    from oasisvq.data.volumes3d import prepare_volume
    from oasisvq.errors import DataError
    from oasisvq.studio import backend
    from oasisvq.studio import volumes as SV

    st = backend.open_run(run3d)
    volume, _ = brain(70.0, "F", np.random.default_rng(3))
    scan = tmp_path / "my-scan.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 2.0, 1.0])), scan)
    r = SV.reconstruct_upload(st, scan, "my-scan.nii.gz")
    prepared, _, affine = prepare_volume(scan, None, Run.open(run3d).data_options)
    np.testing.assert_allclose(r["original"], prepared / 255.0)
    assert r["label"] == "my-scan.nii.gz" and r["reconstruction"].shape == (16, 16, 16)
    # written with the affine that overlays the uploaded scan
    written = nib.load(SV.write_reconstruction(r, tmp_path / "recon.nii.gz"))
    np.testing.assert_allclose(written.affine, affine)
    np.testing.assert_allclose(written.get_fdata(), r["reconstruction"], atol=1e-6)
    # with a brain mask: as the data reader applies it
    half = np.zeros(volume.shape, np.uint8)
    half[: volume.shape[0] // 2] = 1
    mask = tmp_path / "half.nii.gz"
    nib.save(nib.Nifti1Image(half, np.diag([2.0, 2.0, 2.0, 1.0])), mask)
    m = SV.reconstruct_upload(st, scan, "my-scan.nii.gz", (mask, "half.nii.gz"))
    masked, _, _ = prepare_volume(scan, mask, Run.open(run3d).data_options)
    np.testing.assert_allclose(m["original"], masked / 255.0)
    assert m["label"] == "my-scan.nii.gz (brain mask half.nii.gz)"
    assert not np.allclose(m["original"], r["original"])
    flat = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), flat)
    with pytest.raises(DataError, match=r"^flat.nii: volume of shape \(16, 16\): expected 3D"):
        SV.reconstruct_upload(st, flat, "flat.nii")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not a volume")
    with pytest.raises(DataError, match=r"^junk.nii.gz: unreadable volume"):
        SV.reconstruct_upload(st, junk, "junk.nii.gz")
    with pytest.raises(DataError, match=r"^junk.nii.gz: unreadable volume"):
        SV.reconstruct_upload(st, scan, "my-scan.nii.gz", (junk, "junk.nii.gz"))


def test_reconstruct_applies_a_brain_mask_given_with_one_scan(run3d: Path, tmp_path) -> None:
    run = Run.open(run3d)
    scan = Path(run.split("test").paths[0])
    src = nib.load(str(scan))
    half = np.zeros(src.shape, np.uint8)
    half[: src.shape[0] // 2] = 1  # the subject's right half
    mask = tmp_path / "right-half.nii.gz"
    nib.save(nib.Nifti1Image(half, src.affine), mask)
    stem = scan.name.removesuffix(".nii.gz")
    masked, plain = tmp_path / "masked", tmp_path / "plain"
    args = ["reconstruct", str(run3d), str(scan)]
    assert main([*args, "--mask", str(mask), "--out", str(masked)]) == 0
    assert main([*args, "--out", str(plain)]) == 0
    seen = nib.load(str(masked / f"{stem}_input.nii.gz")).get_fdata()
    whole = nib.load(str(plain / f"{stem}_input.nii.gz")).get_fdata()
    # the masked input holds about half the brain's voxels, none beyond the mask
    assert 0.3 < (seen > 0).sum() / (whole > 0).sum() < 0.7
    world = nib.load(str(masked / f"{stem}_input.nii.gz")).affine
    inside = np.argwhere(seen > 0)
    vox = np.linalg.solve(src.affine, world @ np.c_[inside, np.ones(len(inside))].T)[:3].T
    assert vox[:, 0].max() < src.shape[0] / 2 + 1


def test_a_mask_with_a_folder_or_a_missing_mask_is_a_one_line_error(
    run3d: Path, tmp_path, capsys
) -> None:
    run = Run.open(run3d)
    scan = Path(run.split("test").paths[0])
    out = tmp_path / "r"
    folder = ["reconstruct", str(run3d), str(scan.parent), "--mask", str(scan), "--out", str(out)]
    assert main(folder) == 2
    missing = ["reconstruct", str(run3d), str(scan), "--mask", str(tmp_path / "no.nii.gz")]
    assert main([*missing, "--out", str(out)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not the folder" in err[0] and "no such mask file" in err[1], err
    assert not out.exists()
