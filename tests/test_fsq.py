"""Finite scalar quantization: levels, the code bijection, gradients, presets, a VQ-VAE."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from oasisvq.errors import ConfigError
from oasisvq.model.fsq import FSQuantizer
from oasisvq.model.presets import PRESETS, VQVAEConfig, get_preset
from oasisvq.model.quantizer import QuantizerConfig
from oasisvq.model.vqvae import VQVAE

pytestmark = pytest.mark.usefixtures("one_thread")


def _fsq(levels: tuple[int, ...], dim: int | None = None) -> FSQuantizer:
    return FSQuantizer(QuantizerConfig(kind="fsq", levels=levels, dim=dim or len(levels)))


@pytest.mark.parametrize("levels", [(4, 4), (8, 8, 8), (5, 3), (2, 7, 6)])
def test_each_channel_rounds_to_its_levels(levels: tuple[int, ...]) -> None:
    """Channel c takes exactly levels[c] values (k - L//2) / (L//2), all of them reached
    from a wide spread of inputs, inside [-1, 1]."""
    fsq = _fsq(levels)
    z = torch.linspace(-6, 6, 2001)[:, None].expand(-1, len(levels))
    q = fsq.quantize(z)
    for c, n in enumerate(levels):
        half = n // 2
        expected = (torch.arange(n) - half) / half
        torch.testing.assert_close(q[:, c].unique(), expected)
    assert q.abs().max() <= 1


@pytest.mark.parametrize("levels", [(4, 4), (8, 8, 8), (5, 3, 2)])
def test_code_index_is_a_bijection_with_level_tuples(levels: tuple[int, ...]) -> None:
    fsq = _fsq(levels)
    k = math.prod(levels)
    assert fsq.cfg.codebook_size == k
    codes = torch.arange(k)
    vectors = fsq.codes_to_vectors(codes)  # (K, C)
    assert len(vectors.unique(dim=0)) == k
    assert torch.equal(fsq.vectors_to_codes(vectors), codes)
    # mixed radix, channel 0 least significant
    idx = torch.round(vectors * fsq.half_width + fsq.half_width).long()
    radix = torch.tensor([math.prod(levels[:c]) for c in range(len(levels))])
    assert torch.equal((idx * radix).sum(1), codes)
    # every level tuple appears
    tuples = {tuple(r) for r in idx.tolist()}
    assert tuples == set(itertools.product(*(range(n) for n in levels)))


def test_forward_codes_match_the_quantized_vectors() -> None:
    torch.manual_seed(0)
    fsq = _fsq((8, 5, 4))
    z = 2 * torch.randn(2, 3, 5, 6)
    z_q, codes, loss = fsq(z)
    assert codes.shape == (2, 5, 6) and codes.dtype == torch.long
    assert float(loss) == 0.0
    torch.testing.assert_close(fsq.lookup(codes), z_q)
    assert len(codes.unique()) > 20  # a spread input uses many codes


def test_straight_through_gradient_is_that_of_the_bound() -> None:
    """Rounding passes gradients unchanged: d z_q / d z is d bound(z) / d z / (L // 2)."""
    torch.manual_seed(0)
    fsq = _fsq((8, 5))
    z = torch.randn(3, 2, 4, 4, requires_grad=True)
    fsq(z)[0].sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    (fsq.bound(z2.permute(0, 2, 3, 1)) / fsq.half_width).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)
    assert (z.grad > 0).all()


def test_projections_when_dim_differs_and_codes_stay_fp32_under_autocast() -> None:
    torch.manual_seed(0)
    fsq = _fsq((8, 8, 8), dim=16)
    z = torch.randn(4, 16, 8, 8)
    z_q, codes, _ = fsq(z)
    assert z_q.shape == z.shape
    assert {n for n, _ in fsq.named_parameters()} == {
        "project_in.weight",
        "project_in.bias",
        "project_out.weight",
        "project_out.bias",
    }
    same = _fsq((8, 8, 8))
    x = 3 * torch.randn(4, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = same(x)[1]
    assert torch.equal(got, same(x)[1])


def test_bad_levels_and_kinds_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"fsq levels \(4, 1\).*at least 2"):
        QuantizerConfig(kind="fsq", levels=(4, 1))
    with pytest.raises(ConfigError, match=r"fsq levels \(\)"):
        QuantizerConfig(kind="fsq")
    with pytest.raises(ConfigError, match="kind 'lfq'.*vq, fsq"):
        QuantizerConfig(kind="lfq")
    with pytest.raises(ConfigError, match="codebook size 256.*512"):
        get_preset("hifi-fsq", codebook_size=256)


def test_fsq_presets_have_the_bits_of_their_vq_presets() -> None:
    pairs = (("compact", (4, 4)), ("mid", (8, 8, 4)), ("hifi", (8, 8, 8)))
    for vq, fsq, levels in ((name, f"{name}-fsq", levels) for name, levels in pairs):
        a, b = PRESETS[vq], PRESETS[fsq]
        assert b.quantizer.kind == "fsq" and b.quantizer.levels == levels
        assert b.bits_per_image == a.bits_per_image and b.grid == a.grid
        assert b.quantizer.codebook_size == a.quantizer.codebook_size
        assert b.widths == a.widths and b.blocks == a.blocks and b.lr == a.lr
    # any preset takes an fsq quantizer
    mid = get_preset("mid", kind="fsq", levels=(8, 8, 4))
    assert mid.quantizer.codebook_size == 256 and isinstance(VQVAE(mid).quantizer, FSQuantizer)


def test_configs_round_trip_and_old_configs_are_vq() -> None:
    cfg = PRESETS["hifi-fsq"]
    d = cfg.to_dict()
    d["quantizer"]["levels"] = list(d["quantizer"]["levels"])  # as read back from JSON
    assert VQVAEConfig.from_dict(d) == cfg
    old = PRESETS["hifi"].to_dict()
    for key in ("kind", "levels"):
        del old["quantizer"][key]
    assert VQVAEConfig.from_dict(old).quantizer.kind == "vq"


def test_fsq_vqvae_trains_and_reconstructs() -> None:
    """A small VQ-VAE with FSQ learns discs of varying radius: the loss falls well below its
    start, codes round-trip through decode, and the levels are used."""
    cfg = VQVAEConfig(
        name="tiny-fsq",
        arch="resnet",
        image_size=16,
        widths=(8, 16),
        blocks=(0, 0),
        quantizer=QuantizerConfig(kind="fsq", levels=(5, 5), dim=4),
    )
    torch.manual_seed(0)
    model = VQVAE(cfg)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    radius = torch.rand(32)[:, None, None] * 0.6 + 0.2
    x = ((xx**2 + yy**2) < radius**2).float()[:, None]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        out = model(x)
        loss = torch.nn.functional.mse_loss(out.recon, x)
        opt.zero_grad()
        (loss + out.vq_loss).backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])
    model.eval()
    with torch.no_grad():
        codes = model.encode(x)
        assert codes.shape == (32, 4, 4) and int(codes.max()) < 25
        torch.testing.assert_close(model.decode(codes), model(x).recon.clamp(0, 1))
    assert len(codes.unique()) >= 4
    assert not any("levels" in k or "basis" in k for k in model.state_dict())


def test_an_fsq_preset_trains_saves_and_loads(tiny_tree, tmp_path, capsys) -> None:
    """`oasisvq train --preset compact-fsq` end to end: codes-used statistics, a checkpoint
    whose config rebuilds the FSQ quantizer, and `oasisvq presets` listing both variants."""
    import json

    import oasisvq
    from oasisvq.cli import main

    run = tmp_path / "run"
    args = ["--size", "32", "--batch-size", "8", "--amp", "off", "--epochs", "1"]
    assert (
        main(
            ["train", "--data", str(tiny_tree), "--out", str(run), "--preset", "compact-fsq", *args]
        )
        == 0
    )
    row = json.loads((run / "history.json").read_text())[-1]
    assert 1 <= row["train_codes_used"] <= 16 and "val_ssim" in row
    model = oasisvq.load(run)
    assert isinstance(model.vqvae.quantizer, FSQuantizer)
    assert model.config.quantizer.levels == (4, 4)
    codes = model.encode(torch.rand(2, 32, 32))
    assert codes.shape == (2, 2, 2) and int(codes.max()) < 16
    capsys.readouterr()
    assert main(["presets", "--json"]) == 0
    names = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert names["hifi-fsq"]["bits_per_image"] == names["hifi"]["bits_per_image"]
    assert names["compact-fsq"]["codebook_size"] == 16
