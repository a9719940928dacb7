"""End to end on a tiny VQ-VAE run: train-prior (cached codes, resume), priors, sample,
the ``model.sample`` API and evaluate-samples."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import oasisvq
from oasisvq import cli
from oasisvq.data.loader import DataOptions, load_splits
from oasisvq.model.presets import VQVAEConfig
from oasisvq.model.quantizer import QuantizerConfig
from oasisvq.model.vqvae import VQVAE
from oasisvq.runs import checkpoint
from oasisvq.train.config import TrainConfig

SIZE, K = 128, 8
SMALL = ["--option", "d_model=32", "--option", "n_layers=1", "--option", "n_heads=2"]
FAST = ["--device", "cpu", "--amp", "off", "--batch-size", "8"]


def _run_cli(*argv: str) -> int:
    return cli.main(list(argv))


def _brain(rng: np.random.Generator, cls: int) -> np.ndarray:
    yy, xx = np.mgrid[-1 : 1 : SIZE * 1j, -1 : 1 : SIZE * 1j]
    head = (xx**2 / 0.7 + yy**2 / 0.85 < 1).astype(np.float32) * 0.6
    r = 0.1 + 0.08 * cls + 0.03 * rng.random()
    ventricle = (xx**2 + (yy + 0.1) ** 2 < r**2).astype(np.float32) * 0.5
    img = head - ventricle + 0.05 * rng.standard_normal((SIZE, SIZE))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _make_data(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("validate", 6)):
        for c, name in enumerate(("A", "B")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_brain(rng, c)).save(folder / f"{name}{i}.png")


def _make_vqvae_run(run: Path, data_root: Path) -> None:
    cfg = VQVAEConfig(
        name="tiny",
        arch="seed",
        image_size=SIZE,
        widths=(4, 4, 8, 8),
        quantizer=QuantizerConfig(codebook_size=K, dim=4),
    )
    torch.manual_seed(0)
    model = VQVAE(cfg)
    opts = DataOptions(size=SIZE)
    images = load_splits(data_root, opts)["train"].images
    model.train()
    model(
        torch.from_numpy(np.array(images[:32])).float()[:, None] / 255
    )  # k-means initialises the codebook
    config = {
        "kind": "vqvae",
        "model": cfg.to_dict(),
        "train": TrainConfig(epochs=1, batch_size=8, lr=1e-3).to_dict(),
        "data": dataclasses.asdict(opts),
        "data_root": str(data_root),
    }
    checkpoint.save(run, "epoch-0001", model.eval(), config, {}, keep=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """A VQ-VAE run over a two-class image tree, with a small transformer prior (2 epochs)
    that also trains on the mirrored slices."""
    base = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OASISVQ_CACHE", str(base / "cache"))
        _make_data(base / "data")
        _make_vqvae_run(base / "run", base / "data")
        assert (
            _run_cli(
                "train-prior",
                str(base / "run"),
                "--prior",
                "transformer",
                "--epochs",
                "2",
                "--option",
                "mirror=true",
                *SMALL,
                *FAST,
            )
            == 0
        )
        yield base


def test_train_prior_writes_a_run(tiny: Path) -> None:
    run = tiny / "run" / "priors" / "transformer"
    for f in ("history.csv", "curves.png", "config.json", "checkpoints/LATEST"):
        assert (run / f).exists(), f
    saved = checkpoint.read_config(run)
    assert (
        saved["kind"] == "prior"
        and saved["prior"]["grid"] == [8, 8]
        and saved["prior"]["codebook_size"] == K
    )
    rows = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0 < r["val_loss_bits_per_image"] for r in rows)
    # the cached codes are the VQ-VAE's codes of the training split
    with np.load(tiny / "run" / "priors" / "codes_train.npz") as z:
        cached = z["codes"]
    images = load_splits(tiny / "data", DataOptions(size=SIZE))["train"].images
    model = oasisvq.load(tiny / "run")
    assert np.array_equal(cached, model.encode(np.asarray(images, np.float32) / 255).numpy())


def test_transformer_also_trains_on_mirrored_slices(tiny: Path) -> None:
    """A transformer with ``mirror=true`` adds the codes of the left-right mirrored training images
    (cached beside the others) to its training set; sagittal slices are not mirrored."""
    from oasisvq.prior.data import CodeSet
    from oasisvq.train.prior_run import add_mirrored

    train = load_splits(tiny / "data", DataOptions(size=SIZE))["train"]
    model = oasisvq.load(tiny / "run")
    with np.load(tiny / "run" / "priors" / "codes_train-mirrored.npz") as z:
        cached = z["codes"]
    flipped = np.asarray(train.images, np.float32)[:, :, ::-1] / 255
    assert np.array_equal(cached, model.encode(np.ascontiguousarray(flipped)).numpy())
    assert not np.array_equal(cached, model.encode(np.asarray(train.images, np.float32) / 255))

    codes = CodeSet(np.zeros((len(train), 8, 8)), train.classes, train.positions, train.ages)
    both = add_mirrored(codes, model, train)
    assert len(both) == 2 * len(train)
    assert np.array_equal(both.codes[len(train) :], cached)
    assert np.array_equal(both.classes, np.concatenate([train.classes, train.classes]))
    model.saved = {**model.saved, "data": {**model.saved["data"], "axis": "sagittal"}}
    alone = add_mirrored(codes, model, train)
    assert alone is codes


def test_codes_are_encoded_once(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OASISVQ_CACHE", str(tiny / "cache"))

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("codes were encoded again")

    monkeypatch.setattr("oasisvq.prior.data.encode_images", boom)
    args = [
        "train-prior",
        str(tiny / "run"),
        "--prior",
        "pixelcnn-seed-code",
        "--epochs",
        "1",
        "--option",
        "filters=16",
        *FAST,
    ]
    assert _run_cli(*args) == 0
    assert (tiny / "run" / "priors" / "pixelcnn-seed-code" / "checkpoints" / "LATEST").exists()


def test_resume_a_prior_run(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OASISVQ_CACHE", str(tiny / "cache"))
    base = [
        "train-prior",
        str(tiny / "run"),
        "--prior",
        "transformer",
        "--name",
        "resumed",
        *SMALL,
        *FAST,
    ]
    assert _run_cli(*base, "--epochs", "1") == 0
    assert _run_cli(*base, "--epochs", "1") == 2  # exists: needs --resume or --force
    assert _run_cli(*base, "--epochs", "2", "--resume") == 0
    rows = json.loads((tiny / "run" / "priors" / "resumed" / "history.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (tiny / "run" / "priors" / "resumed" / "checkpoints" / "epoch-0002").is_dir()


def _sample(tiny: Path, out: Path, seed: int) -> int:
    args = ["--prior", "transformer", "--n", "5", "--out", str(out), "--seed", str(seed)]
    return _run_cli("sample", str(tiny / "run"), *args, "--device", "cpu")


def test_sample_writes_png_npy_and_figure(tiny: Path) -> None:
    out = tiny / "samples"
    assert _sample(tiny, out, seed=3) == 0
    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) == 5
    codes = np.load(out / "codes.npy")
    assert codes.shape == (5, 8, 8) and codes.min() >= 0 and codes.max() < K
    assert (out / "samples.png").stat().st_size > 2000 and json.loads(
        (out / "sample.json").read_text()
    )["n"] == 5
    # the PNG files are the decoded codes
    model = oasisvq.load(tiny / "run")
    decoded = np.round(model.decode(codes).numpy() * 255).astype(np.uint8)
    assert np.abs(np.asarray(Image.open(pngs[2])).astype(int) - decoded[2]).max() <= 1
    # the same seed gives the same samples, another seed others
    again = tiny / "again"
    assert _sample(tiny, again, seed=3) == 0
    assert np.array_equal(np.load(again / "codes.npy"), codes)
    other = tiny / "other"
    assert _sample(tiny, other, seed=4) == 0
    assert not np.array_equal(np.load(other / "codes.npy"), codes)


def test_model_sample_api(tiny: Path) -> None:
    run = oasisvq.load(tiny / "run")
    exact = oasisvq.SamplingOptions(seed=1, temperature=0.8, top_k=4, precision="fp32")
    images, codes = run.sample(3, "transformer", exact)
    assert images.shape == (3, SIZE, SIZE) and images.dtype == torch.float32
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    again, same = oasisvq.load(tiny / "run").sample(3, "transformer", exact)
    assert torch.equal(images, again) and torch.equal(codes, same) and codes.shape == (3, 8, 8)
    torch.testing.assert_close(run.decode(codes), images)
    fast = run.sample(3, "transformer", dataclasses.replace(exact, precision="auto"))[0]
    assert (fast - images).abs().max() < 0.02  # bf16 decoding where native, same codes


def test_conditional_prior_cli(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OASISVQ_CACHE", str(tiny / "cache"))
    run = str(tiny / "run")
    assert (
        _run_cli(
            "train-prior",
            run,
            "--prior",
            "transformer",
            "--name",
            "by-class",
            "--condition",
            "class",
            "--epochs",
            "1",
            *SMALL,
            *FAST,
        )
        == 0
    )
    saved = checkpoint.read_config(tiny / "run" / "priors" / "by-class")
    assert saved["prior"]["condition"] == ["class"] and saved["prior"]["class_names"] == ["A", "B"]
    assert saved["prior"]["mirror"] is False  # by default the slices are taken as they are
    out = tiny / "class-b"

    def sample(*args: str) -> int:
        return _run_cli("sample", run, "--n", "2", "--out", str(out), "--device", "cpu", *args)

    assert sample("--prior", "by-class", "--class", "B", "--guidance", "2") == 0
    assert len(list((out / "images").glob("*.png"))) == 2
    assert json.loads((out / "sample.json").read_text())["guidance"] == 2.0
    assert sample("--prior", "by-class", "--class", "Z") == 2
    assert sample("--prior", "transformer", "--class", "A") == 2
    assert sample("--prior", "transformer", "--guidance", "2") == 2  # needs a conditional prior
    assert sample("--prior", "nope") == 2
    # the data has no slice positions
    assert (
        _run_cli(
            "train-prior",
            run,
            "--name",
            "by-pos",
            "--condition",
            "position",
            "--epochs",
            "1",
            *SMALL,
            *FAST,
        )
        == 2
    )


def test_priors_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli("priors", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in rows]
    assert {"pixelcnn-seed", "pixelcnn-seed-code", "transformer"} <= set(names)
    assert all(r["description"] for r in rows)


def test_evaluate_samples(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OASISVQ_CACHE", str(tiny / "cache"))
    out = tiny / "eval.json"
    args = [
        "evaluate-samples",
        str(tiny / "run"),
        "--prior",
        "by-class",
        "--n",
        "12",
        "--json",
        str(out),
        "--feature-epochs",
        "1",
        "--device",
        "cpu",
    ]
    if not (tiny / "run" / "priors" / "by-class").exists():
        pytest.skip("needs the conditional prior of test_conditional_prior_cli")
    assert _run_cli(*args) == 0
    r = json.loads(out.read_text())
    for key in (
        "nll_bits_per_image",
        "uniform_bits_per_image",
        "nn_ssim_mean",
        "memorised_share",
        "memorised_share_of_real",
        "diversity_ms_ssim_samples",
        "diversity_ms_ssim_real",
        "frechet_distance",
        "frechet_distance_real_vs_real",
    ):
        assert key in r, key  # the flat aliases scripts read
    assert r["likelihood"]["nll_bits_per_image"] == r["nll_bits_per_image"]
    assert r["frechet"]["samples"] == r["frechet_distance"]
    assert "nll_bits_per_image_wrong_condition" in r["likelihood"]
    assert {"class_agreement_samples", "sample_class_share"} <= set(r["conditions"])
    setup = r["setup"]
    assert setup["split"] == "validate" and r["uniform_bits_per_image"] == pytest.approx(64 * 3)
    saved = json.loads((tiny / "run" / "config.json").read_text())
    assert setup["preset"] == saved["model"]["name"]
    assert 0 < r["nll_bits_per_image"] and 0 <= r["memorised_share"] <= 1
    low, high = r["memorisation"]["memorised_share_ci95"]
    assert 0 <= low <= r["memorised_share"] <= high <= 1 and high > low
    assert -1 <= r["nn_ssim_mean"] <= 1 + 1e-5 and 0 <= r["diversity_ms_ssim_samples"] <= 1 + 1e-5
    assert r["frechet_distance"] >= 0 and r["frechet_distance_real_vs_real"] >= 0
    assert r["frechet"]["real_vs_mirrored"] >= 0 and setup["mirror"] is False  # the default
    assert r["frechet"]["real_vs_train_reconstructions"] >= 0
    assert setup["decoder_finetune"] is None and setup["adversarial_weight"] == 0
    figs = Path(r["figures"])
    assert (figs / "nearest_neighbours.png").exists() and (figs / "samples.png").exists()
    # the feature network is trained once and then reused
    assert any((tiny / "run" / "features").iterdir())


def test_resolve_condition() -> None:
    from oasisvq.errors import ConfigError
    from oasisvq.prior.registry import get_prior_config
    from oasisvq.prior.sampling import resolve_conditions

    cfg = dataclasses.replace(
        get_prior_config("transformer", condition="class,position"), class_names=("CN", "AD")
    )
    wanted = {"class": "AD", "position": 0.25}
    want = {"class": 1, "position": 0.25, "age": None, "sex": None}
    assert resolve_conditions(cfg, wanted) == want
    assert resolve_conditions(cfg, {"class": 0})["class"] == 0
    assert resolve_conditions(cfg, None)["class"] is None
    for bad in (
        {"class": "XX"},
        {"class": 5},
        {"position": 1.5},
        {"age": 70.0},
        {"sex": "F"},
        {"mood": 1},
    ):
        with pytest.raises(ConfigError):
            resolve_conditions(cfg, bad)
