"""Priors trained with the shared engine on synthetic code grids: they learn, they resume."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from oasisvq.prior.base import SamplingOptions, make_cond
from oasisvq.prior.data import CodeSet
from oasisvq.prior.registry import get_prior_config
from oasisvq.train.config import TrainConfig
from oasisvq.train.prior_run import train_prior_on_codes
from oasisvq.train.prior_task import evaluate_nll, nll_per_image

K, GRID = 8, (4, 4)
UNIFORM = GRID[0] * GRID[1] * math.log2(K)


def _pattern(n: int, seed: int) -> CodeSet:
    """Cell (r, c) holds (offset + 4r + c) mod K with a random offset per grid: only the
    first cell is uncertain, so the ideal NLL is log2(K) = 3 bits per grid."""
    rng = np.random.default_rng(seed)
    offset = rng.integers(0, K, n)
    cells = np.arange(GRID[0] * GRID[1]).reshape(GRID)
    return CodeSet.from_codes((offset[:, None, None] + cells) % K)


def _by_class(n: int, seed: int) -> CodeSet:
    """Class c in {0, 1, 2}: a checkerboard of codes 2c and 2c+1; the class fixes the grid."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 3, n)
    r, c = np.indices(GRID)
    return CodeSet.from_codes(2 * cls[:, None, None] + (r + c) % 2, classes=cls)


def _cfg(name: str, **kw: object):
    small = {
        "filters": 32,
        "residual_blocks": 2,
        "head_layers": 1,
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 2,
        "dropout": 0.0,
    }
    small.update(kw)
    return dataclasses.replace(get_prior_config(name, **small), codebook_size=K, grid=GRID)


def _train_cfg(epochs: int, **kw: object) -> TrainConfig:
    base = {
        "batch_size": 32,
        "lr": 3e-3,
        "device": "cpu",
        "amp": "off",
        "warmup_fraction": 0.05,
        "channels_last": False,
    }
    base.update(kw)
    return TrainConfig(epochs=epochs, **base)


@pytest.mark.parametrize("name", ["transformer", "pixelcnn-seed-code"])
def test_prior_learns_a_predictable_pattern(tmp_path: Path, name: str) -> None:
    train, val = _pattern(384, 0), _pattern(64, 1)
    model, history = train_prior_on_codes(tmp_path / name, _cfg(name), train, val, _train_cfg(12))
    final = history.rows[-1]
    assert len(history.rows) == 12
    assert final["val_loss_bits_per_image"] < 0.25 * UNIFORM, final  # ideal: 3 of 48 bits
    assert final["val_loss_bits_per_image"] < history.rows[0]["val_loss_bits_per_image"]
    r = evaluate_nll(model, val, torch.device("cpu"))
    assert r["bits_per_image"] == pytest.approx(final["val_loss_bits_per_image"], rel=1e-5)
    assert r["accuracy"] > 0.8
    for f in ("history.csv", "curves.png", "checkpoints/LATEST"):
        assert (tmp_path / name / f).exists(), f


def test_conditional_prior_follows_its_condition(tmp_path: Path) -> None:
    cfg = dataclasses.replace(_cfg("transformer", condition="class"), class_names=("a", "b", "c"))
    train, val = _by_class(384, 0), _by_class(96, 1)
    model, _ = train_prior_on_codes(tmp_path / "cond", cfg, train, val, _train_cfg(12))
    cpu = torch.device("cpu")
    true = nll_per_image(model, val, cpu).mean()
    wrong = nll_per_image(model, val, cpu, cond_override={"class": (val.classes + 1) % 3}).mean()
    unknown = nll_per_image(model, val, cpu, cond_override={"class": np.full(len(val), -1)}).mean()
    assert true < 2.0 < wrong  # the class fixes the grid
    assert true < unknown < wrong  # unknown: only the first cell is uncertain (log2 3 bits)
    for c in range(3):
        codes = model.sample(
            32, make_cond(32, class_index=c), generator=torch.Generator().manual_seed(c)
        )
        assert ((codes // 2) == c).float().mean() > 0.9
    # classifier-free guidance: 0 ignores the class (the marginal mixes all three), 3 keeps it
    for c in range(3):
        cond, g = make_cond(300, class_index=c), torch.Generator().manual_seed(10 + c)
        marginal = model.sample(300, cond, SamplingOptions(guidance=0.0), g)[:, 0, 0] // 2
        assert 0.15 < (marginal == c).float().mean() < 0.55
        guided = model.sample(300, cond, SamplingOptions(guidance=3.0), g)
        assert ((guided // 2) == c).float().mean() > 0.95


def _weights(run: Path) -> dict[str, torch.Tensor]:
    tag = (run / "checkpoints" / "LATEST").read_text().strip()
    return load_file(str(run / "checkpoints" / tag / "model.safetensors"))


def test_resumed_prior_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    """Interrupt after epoch 1 (drop the later checkpoint), resume: the same weights and history."""
    train, val = _pattern(96, 0), _pattern(32, 1)
    cfg = _cfg("transformer", dropout=0.1)
    tc = _train_cfg(3, keep_checkpoints=5)
    train_prior_on_codes(tmp_path / "a", cfg, train, val, tc)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    ckpts = tmp_path / "b" / "checkpoints"
    shutil.rmtree(ckpts / "epoch-0002")
    shutil.rmtree(ckpts / "epoch-0003")
    (ckpts / "LATEST").write_text("epoch-0001")
    _, history = train_prior_on_codes(tmp_path / "b", cfg, train, val, tc, resume=True)
    assert [r["epoch"] for r in history.rows] == [1, 2, 3]
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
