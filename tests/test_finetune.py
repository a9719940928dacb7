"""finetune-decoder: the decoder trains further on fixed codes beside a patch
discriminator; the codes, the priors and the feature network carry over."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import oasisvq
from oasisvq.cli import main
from oasisvq.data.loader import DataOptions, load_splits
from oasisvq.errors import ConfigError
from oasisvq.model.discriminator import PatchDiscriminator, hinge_losses
from oasisvq.model.presets import get_preset
from oasisvq.model.vqvae import VQVAE
from oasisvq.runs import checkpoint
from oasisvq.runs import codes as run_codes
from oasisvq.train.vqvae_task import VQVAETask, reconstruction_loss

FAST = ["--batch-size", "8", "--amp", "off", "--device", "cpu"]
PRIOR = ["--option", "d_model=32", "--option", "n_layers=1", "--option", "n_heads=2"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint.latest(run) / "model.safetensors"))


def _parent(data: Path, run: Path) -> Path:
    args = ["train", "--data", str(data), "--out", str(run), "--preset", "seed", "--size", "32"]
    assert main([*args, "--epochs", "1", *FAST]) == 0
    assert main(["train-prior", str(run), "--epochs", "1", *PRIOR, *FAST]) == 0
    return run


def _finetune(parent: Path, out: Path, *extra: str) -> int:
    return main(["finetune-decoder", str(parent), "--out", str(out), *FAST, *extra])


def test_finetune_trains_the_decoder_alone_and_keeps_codes_and_priors(
    tiny_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    parent = _parent(tiny_tree, tmp_path / "parent")
    out = tmp_path / "ft"
    assert _finetune(parent, out, "--epochs", "1", "--adversarial-start", "1") == 0
    assert _finetune(parent, out, "--epochs", "2", "--resume") == 0
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3"]) == 2  # would unfreeze

    before, after = _weights(parent), _weights(out)
    for k, v in before.items():
        if k.startswith(("encoder.", "quantizer.")):
            assert torch.equal(v, after[k]), k  # no gradient step, no EMA update, no restart
    assert any(not torch.equal(v, after[k]) for k, v in before.items() if k.startswith("decoder."))
    assert any(k.startswith("discriminator.") for k in after)

    saved = checkpoint.read_config(out)
    parent_saved = checkpoint.read_config(parent)
    assert saved["model"]["adversarial_weight"] == 0.01 and saved["finetune"]["trains"] == "decoder"
    assert saved["model"]["adversarial_start"] == 1  # kept on resume
    assert saved["train"]["lr"] == pytest.approx(parent_saved["train"]["lr"] / 10)
    rows = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["train_disc"] > 0 and "train_gen" in r for r in rows)

    # the same images get the same codes; the codes decode differently
    images = load_splits(tiny_tree, DataOptions(size=32))["validate"].images
    x = np.asarray(images, np.float32) / 255
    a, b = oasisvq.load(parent), oasisvq.load(out)
    codes = a.encode(x)
    assert torch.equal(codes, b.encode(x))
    assert not torch.equal(a.decode(codes), b.decode(codes))

    # cached codes and the prior carry over: no encoding, no warning, sampling works
    fp = run_codes.codes_fingerprint
    assert fp(out) == fp(parent) != run_codes.vqvae_fingerprint(out)
    train = load_splits(tiny_tree, DataOptions(size=32))["train"]

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("codes were encoded again")

    monkeypatch.setattr(run_codes, "encode_images", boom)
    cached = run_codes.cached_codes(out, "train", train, boom, torch.device("cpu"))
    assert np.array_equal(cached.codes, a.encode(np.asarray(train.images, np.float32) / 255))
    capsys.readouterr()
    assert main(["sample", str(out), "--n", "2", "--out", str(tmp_path / "s"), *FAST[-2:]]) == 0
    assert "warning" not in capsys.readouterr().err
    assert len(list((tmp_path / "s" / "images").glob("*.png"))) == 2


def test_finetune_refuses_unknown_priors_and_existing_runs(
    tiny_tree: Path, tmp_path: Path, capsys
) -> None:
    parent = _parent(tiny_tree, tmp_path / "parent")
    out = tmp_path / "ft"
    assert _finetune(parent, out, "--priors", "nope") == 2
    assert "no trained prior 'nope'" in capsys.readouterr().err and not out.exists()
    assert _finetune(tmp_path / "missing", out) == 4 and not out.exists()  # no such run
    assert _finetune(parent, out, "--epochs", "1", "--priors", "none") == 0
    assert not (out / "priors" / "transformer").exists()
    assert _finetune(parent, out, "--epochs", "1") == 2  # exists: --resume or --force


def test_hinge_losses_send_each_gradient_to_its_own_side() -> None:
    torch.manual_seed(0)
    disc = PatchDiscriminator(width=8)
    decoded = torch.rand(2, 1, 32, 32, requires_grad=True)
    real = torch.rand(2, 1, 32, 32)
    g_loss, d_loss = hinge_losses(disc, decoded * 1.0, real)
    assert disc(real).shape == (2, 1, 4, 4)
    g_loss.backward(retain_graph=True)
    assert all(p.grad is None for p in disc.parameters())
    assert decoded.grad is not None and decoded.grad.abs().sum() > 0
    decoded.grad = None
    d_loss.backward()
    assert decoded.grad is None
    assert all(p.grad is not None for p in disc.parameters())
    assert sum(float(p.grad.abs().sum()) for p in disc.parameters()) > 0


def test_adversarial_training_refuses_several_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    model = VQVAE(get_preset("seed", adversarial_weight=0.1))
    with pytest.raises(ConfigError, match="one process"):
        VQVAETask(model, None, None, 8)  # type: ignore[arg-type]


def test_generator_term_joins_after_adversarial_start() -> None:
    torch.manual_seed(0)
    cfg = get_preset("seed", adversarial_weight=0.5, adversarial_start=3, image_size=32)
    model = VQVAE(cfg)
    slices = SimpleNamespace(images=np.zeros((4, 32, 32), np.uint8))
    task = VQVAETask(model, slices, None, 8)  # type: ignore[arg-type]
    x = torch.rand(4, 1, 32, 32)
    for step, joined in ((0, False), (2, False), (3, True), (9, True)):
        task.set_step(step)
        loss, logs = task.loss(model, x)
        expected = logs["recon"] + logs["vq"] + logs["disc"] + joined * 0.5 * logs["gen"]
        assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5), step


def test_the_adaptive_weight_sets_the_ratio_of_gradients_at_the_decoders_last_layer() -> None:
    torch.manual_seed(0)
    cfg = get_preset("seed", adversarial_weight=0.5, adversarial_adaptive=True, image_size=32)
    model = VQVAE(cfg).eval()  # no EMA update between the calls below
    slices = SimpleNamespace(images=np.zeros((4, 32, 32), np.uint8))
    task = VQVAETask(model, slices, None, 8)  # type: ignore[arg-type]
    x = torch.rand(4, 1, 32, 32)
    last = model.decoder_output_weight()
    assert last is model.decoder[-1].weight  # the layer that writes the image

    def gradient_norms() -> tuple[float, float, float]:
        loss, logs = task.loss(model, x)
        recon = model(x).recon
        rec = reconstruction_loss(recon, x, cfg)
        gen, _ = hinge_losses(model.discriminator, recon.float(), x)
        g_rec, g_gen = (
            torch.autograd.grad(t, last, retain_graph=True)[0].norm() for t in (rec, gen)
        )
        return float(logs["gen_weight"]), float(g_rec), float(g_gen)

    weight, g_rec, g_gen = gradient_norms()
    assert weight * g_gen == pytest.approx(0.5 * g_rec, rel=1e-2)  # 1e-4 added below the line
    # a discriminator ten times as loud gets a tenth of the weight: the same gradient
    with torch.no_grad():
        model.discriminator[-1].weight.mul_(10)
        model.discriminator[-1].bias.mul_(10)
    louder, _, _ = gradient_norms()
    assert louder == pytest.approx(weight / 10, rel=1e-2)
    task.cfg = model.cfg = cfg = get_preset("seed", adversarial_weight=0.5, image_size=32)
    _, logs = task.loss(model, x)
    assert float(logs["gen_weight"]) == 0.5  # without it, the weight as given
