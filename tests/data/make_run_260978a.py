"""Writes tests/data/run-260978a: a tiny resnet VQ-VAE run saved by the code of commit
260978a (before the decoder_blocks/upsample/normalize options), with its outputs on a fixed
input. Run from a checkout of that commit: ``python make_run_260978a.py run-260978a``."""

import sys
from pathlib import Path

import numpy as np
import torch

from oasisvq.model.presets import VQVAEConfig
from oasisvq.model.quantizer import QuantizerConfig
from oasisvq.model.vqvae import VQVAE
from oasisvq.train import checkpoint

out = Path(sys.argv[1])
torch.manual_seed(0)
cfg = VQVAEConfig(
    name="tiny",
    arch="resnet",
    image_size=32,
    widths=(8, 16),
    blocks=(1, 1),
    mid_blocks=1,
    quantizer=QuantizerConfig(codebook_size=8, dim=4),
)
model = VQVAE(cfg).train()
model(torch.rand(4, 1, 32, 32))  # k-means initialisation of the codebook
model.eval()
yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
x = torch.stack([((xx**2 + yy**2) < r).float() * (0.5 + 0.5 * xx) for r in (0.3, 0.6, 0.9)])[
    :, None
]
with torch.no_grad():
    codes = model.encode(x)
    recon = model.decode(codes)
checkpoint.save(out, "epoch-0001", model, {"kind": "vqvae", "model": cfg.to_dict()}, {})
np.savez(out / "expected.npz", images=x.numpy(), codes=codes.numpy(), recon=recon.numpy())
print(codes.unique(), recon.shape, recon.mean())
