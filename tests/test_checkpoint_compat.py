"""Runs written by earlier versions load, with every tensor where it was."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import oasisvq

# The config of a tiny resnet run as commit 260978a wrote it: before the decoder_blocks,
# decoder_mid_blocks, upsample and normalize options existed.
OLD_CONFIG = {
    "kind": "vqvae",
    "model": {
        "name": "tiny",
        "arch": "resnet",
        "description": "",
        "image_size": 32,
        "widths": [8, 16],
        "blocks": [1, 1],
        "mid_blocks": 1,
        "quantizer": {
            "codebook_size": 8,
            "dim": 4,
            "beta": 0.25,
            "update": "ema",
            "decay": 0.99,
            "kmeans_init": True,
            "restart_threshold": 1.0,
        },
        "loss": "mse",
        "ssim_weight": 0.0,
        "data_variance": 0.104,
        "default_epochs": 30,
        "batch_size": 64,
        "lr": 0.001,
        "weight_decay": 0.0,
    },
}


def _conv(name: str, cout: int, cin: int, k: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (cout, cin, k, k), f"{name}.bias": (cout,)}


def _norm(name: str, ch: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (ch,), f"{name}.bias": (ch,)}


def _res(name: str, ch: int) -> dict[str, tuple[int, ...]]:
    return {
        **_norm(f"{name}.body.0", ch),
        **_conv(f"{name}.body.2", ch, ch, 3),
        **_norm(f"{name}.body.3", ch),
        **_conv(f"{name}.body.5", ch, ch, 3),
    }


# Parameter names and shapes that commit 260978a saved for OLD_CONFIG: encoder stem,
# stride-2 convs with residual blocks, a middle block, GroupNorm/SiLU and a 1x1 to the
# latent; decoder 1x1, middle and level blocks, nearest upsampling + conv 3x3, head.
OLD_LAYOUT = {
    **_conv("encoder.net.0", 4, 1, 3),
    **_conv("encoder.net.1", 8, 4, 3),
    **_res("encoder.net.2", 8),
    **_conv("encoder.net.3", 16, 8, 3),
    **_res("encoder.net.4", 16),
    **_res("encoder.net.5", 16),
    **_norm("encoder.net.6", 16),
    **_conv("encoder.net.8", 4, 16, 1),
    **_conv("decoder.net.0", 16, 4, 1),
    **_res("decoder.net.1", 16),
    **_res("decoder.net.2", 16),
    **_conv("decoder.net.4", 8, 16, 3),
    **_res("decoder.net.5", 8),
    **_conv("decoder.net.7", 4, 8, 3),
    **_norm("decoder.net.8", 4),
    **_conv("decoder.net.10", 1, 4, 3),
    "quantizer.embed": (8, 4),
    "quantizer.ema_count": (8,),
    "quantizer.ema_sum": (8, 4),
}


def _write_old_run(run: Path) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(shape, generator=g) for k, shape in OLD_LAYOUT.items()}
    tensors["quantizer.initialised"] = torch.tensor(True)
    ckpt = run / "checkpoints" / "epoch-0001"
    ckpt.mkdir(parents=True)
    save_file(tensors, str(ckpt / "model.safetensors"))
    (ckpt / "config.json").write_text(json.dumps(OLD_CONFIG))
    (run / "config.json").write_text(json.dumps(OLD_CONFIG))
    (run / "checkpoints" / "LATEST").write_text("epoch-0001")
    return tensors


def test_run_from_commit_260978a_loads_with_every_tensor_in_place(tmp_path: Path) -> None:
    saved = _write_old_run(tmp_path)
    model = oasisvq.load(tmp_path)
    cfg = model.config
    assert cfg.upsample == "nearest" and cfg.quantizer.normalize is False
    assert cfg.decoder_blocks is None and cfg.decoder_mid_blocks is None
    state = model.vqvae.state_dict()
    assert set(state) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    # the upsampling the old weights were trained behind is the one rebuilt
    assert isinstance(model.vqvae.decoder.net[3], nn.Upsample)
    assert isinstance(model.vqvae.decoder.net[6], nn.Upsample)
    codes = model.encode(torch.rand(2, 32, 32))
    assert codes.shape == (2, 8, 8) and model.decode(codes).shape == (2, 32, 32)
