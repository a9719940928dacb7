import torch

from oasisvq.model.presets import PRESETS, get_preset
from oasisvq.model.vqvae import VQVAE


def _shapes(seq: torch.nn.Sequential, x: torch.Tensor) -> list[tuple]:
    shapes = []
    for layer in seq:
        x = layer(x)
        if isinstance(layer, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            shapes.append(tuple(x.shape[1:]))
    return shapes


def test_seed_preset_is_the_reports_table():
    model = VQVAE(get_preset("seed"))
    enc = _shapes(model.encoder, torch.zeros(1, 1, 128, 128))
    # (C, H, W): Conv 32/32/64/64 stride 2, Conv 128, 1x1 to 16
    assert enc == [(32, 64, 64), (32, 32, 32), (64, 16, 16), (64, 8, 8), (128, 8, 8), (16, 8, 8)]
    dec = _shapes(model.decoder, torch.zeros(1, 16, 8, 8))
    assert dec == [
        (128, 8, 8),
        (64, 16, 16),
        (64, 32, 32),
        (32, 64, 64),
        (32, 128, 128),
        (1, 128, 128),
    ]
    assert all(
        isinstance(m, torch.nn.ConvTranspose2d)
        for m in model.decoder
        if not isinstance(m, torch.nn.ReLU)
    )
    q = model.cfg.quantizer
    assert (q.codebook_size, q.dim, q.beta) == (16, 16, 0.25)
    assert model.cfg.bits_per_image == 256


def test_presets_round_trip_and_shapes():
    for name, cfg in PRESETS.items():
        model = VQVAE(cfg).eval()
        x = torch.rand(1 + (cfg.dims == 2), 1, *cfg.input_shape)
        recon, codes, loss = model(x)
        assert recon.shape == x.shape, name
        assert codes.shape == (len(x), *cfg.grid_shape), name
        assert codes.max() < cfg.quantizer.codebook_size
        assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_required_presets_exist():
    flat = [c for c in PRESETS.values() if c.dims == 2]
    budget = [
        c for c in flat if c.name != "seed" and c.grid == 8 and c.quantizer.codebook_size == 16
    ]
    assert budget, "a 256-bit (8x8, 16 codes) preset beside seed"
    assert any(c.grid == 32 and c.quantizer.codebook_size == 512 for c in flat)
    rates = {c.bits_per_image / 8 for c in flat}  # bytes per image
    assert {32, 256, 1152} <= rates, rates


def test_codebook_size_override():
    cfg = get_preset("seed", codebook_size=128)
    assert cfg.quantizer.codebook_size == 128 and cfg.bits_per_image == 64 * 7
    assert PRESETS["seed"].quantizer.codebook_size == 16  # the table stays untouched


def test_decode_of_encode_matches_forward():
    model = VQVAE(get_preset("compact")).eval()
    x = torch.rand(3, 1, 128, 128)
    with torch.no_grad():
        recon, codes, _ = model(x)
        assert torch.equal(model.encode(x), codes)
        assert torch.allclose(model.decode(codes), recon.clamp(0, 1), atol=1e-5)


def test_decoder_blocks_and_transposed_upsampling():
    from dataclasses import replace

    from oasisvq.model.networks import ResBlock
    from oasisvq.model.presets import VQVAEConfig

    cfg = replace(
        get_preset("compact"),
        widths=(8, 16, 32),
        blocks=(0, 0, 1),
        mid_blocks=1,
        decoder_blocks=(0, 2, 3),
        decoder_mid_blocks=2,
        upsample="convt",
        full_res=True,
    )
    model = VQVAE(cfg).eval()
    n_res = lambda m: sum(isinstance(x, ResBlock) for x in m.modules())  # noqa: E731
    assert n_res(model.encoder) == 1 + 1 and n_res(model.decoder) == 5 + 2
    ups = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.kernel_size, m.stride, m.out_channels) for m in ups] == [
        ((4, 4), (2, 2), c) for c in (16, 8, 4)
    ]
    assert not any(isinstance(m, torch.nn.Upsample) for m in model.decoder.modules())
    x = torch.rand(2, 1, 64, 64)
    recon, codes, _ = model(x)
    assert recon.shape == x.shape and codes.shape == (2, 8, 8)
    assert VQVAEConfig.from_dict(cfg.to_dict()) == cfg
    # a checkpoint config written before these fields existed still loads, as before
    before = replace(
        PRESETS["hifi"], decoder_blocks=None, decoder_mid_blocks=None, upsample="nearest"
    )
    old = before.to_dict()
    for key in ("decoder_blocks", "decoder_mid_blocks", "upsample"):
        old.pop(key)
    assert VQVAEConfig.from_dict(old) == before


def test_without_full_resolution_layers_no_feature_map_reaches_image_size():
    from dataclasses import replace

    from oasisvq.model.presets import VQVAEConfig

    cfg = replace(
        get_preset("compact"), widths=(8, 16, 32), blocks=(0, 0, 1), decoder_blocks=(1, 1, 1)
    )
    shapes: list[tuple[str, tuple[int, ...]]] = []

    def record(name):
        return lambda mod, inp, out: shapes.append((name, tuple(out.shape)))

    for full_res in (True, False):
        model = VQVAE(replace(cfg, full_res=full_res)).eval()
        shapes.clear()
        for name, mod in [*model.encoder.net.named_children(), *model.decoder.net.named_children()]:
            mod.register_forward_hook(record(name))
        x = torch.rand(2, 1, 64, 64)
        recon, codes, _ = model(x)
        assert recon.shape == x.shape and codes.shape == (2, 8, 8)
        at_full = [s for _, s in shapes[:-1] if s[-1] == 64]  # every layer but the output
        assert bool(at_full) == full_res, (full_res, at_full)
    # the encoder's first layer reads the image with a stride-2 conv; the decoder ends in a
    # 3x3 conv to 4 channels at half size, put side by side by PixelShuffle(2)
    assert model.encoder.net[0].in_channels == 1 and model.encoder.net[0].stride == (2, 2)
    head = list(model.decoder.net)[-2:]
    assert head[0].out_channels == 4 and isinstance(head[1], torch.nn.PixelShuffle)
    assert VQVAEConfig.from_dict(replace(cfg, full_res=False).to_dict()).full_res is False
    old = cfg.to_dict()
    old.pop("full_res")
    assert VQVAEConfig.from_dict(old).full_res is True  # configs from before the option


def test_unknown_upsampling_is_refused():
    from dataclasses import replace

    import pytest

    with pytest.raises(ValueError, match="upsample 'bilinear'"):
        VQVAE(replace(get_preset("compact"), upsample="bilinear"))


def test_a_loss_on_the_clamped_output_costs_nothing_below_zero():
    """Outputs below 0 leave the loss and its gradient untouched when ``loss_on_clamped``:
    evaluation and sampling clamp them, so a black background needs no exact zeros."""
    import numpy as np

    from oasisvq.data.slices import SliceSet
    from oasisvq.train.vqvae_task import VQVAETask

    cfg = get_preset("hifi", codebook_size=8)
    assert cfg.loss_on_clamped and get_preset("mid").loss_on_clamped
    images = np.zeros((2, 16, 16), np.uint8)
    images[:, 4:12, 4:12] = 200  # a bright square on a black background
    data = SliceSet(images=images, subjects=["a", "b"], sources=["a", "b"])
    x = torch.from_numpy(images[:, None] / 255.0).float()
    codes = torch.zeros(2, 4, 4, dtype=torch.long)

    def loss_and_grad(on_clamped: bool, background: float) -> tuple[float, torch.Tensor]:
        recon = x.clone()
        recon[x == 0] = background
        recon.requires_grad_(True)

        class Fixed(torch.nn.Module):  # a model whose output is ``recon``
            cfg = get_preset("hifi", codebook_size=8, loss_on_clamped=on_clamped)

            def forward(self, _x):
                return recon, codes, torch.zeros(())

        task = VQVAETask(VQVAE(Fixed.cfg), data, None, batch_size=2)
        loss, _ = task.loss(Fixed(), x)
        loss.backward()
        return loss.item(), recon.grad

    exact, _ = loss_and_grad(True, 0.0)
    below, grad = loss_and_grad(True, -0.3)
    assert below == exact  # -0.3 is clamped to the exact 0 of the target
    assert torch.all(grad[x == 0] == 0)
    unclamped, grad = loss_and_grad(False, -0.3)
    assert unclamped > exact + 0.01 and torch.all(grad[x == 0] < 0)
