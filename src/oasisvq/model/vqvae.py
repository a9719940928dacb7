"""The VQ-VAE: encoder -> quantizer (vector quantizer or FSQ) -> decoder."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from oasisvq.model.discriminator import PatchDiscriminator
from oasisvq.model.fsq import FSQuantizer
from oasisvq.model.networks import ResDecoder, ResEncoder, SeedDecoder, SeedEncoder
from oasisvq.model.presets import VQVAEConfig
from oasisvq.model.quantizer import QuantizerConfig, VectorQuantizer


class VQOutput(NamedTuple):
    recon: Tensor  # (B, 1, S, S) or (B, 1, X, Y, Z), ~[0, 1]
    codes: Tensor  # (B, h, w) or (B, gx, gy, gz) int64
    vq_loss: Tensor  # scalar


def build_quantizer(cfg: QuantizerConfig, dims: int = 2) -> VectorQuantizer | FSQuantizer:
    """The quantizer of ``cfg.kind``: "vq" (learnt codebook) or "fsq" (fixed levels), for
    latents with ``dims`` spatial axes."""
    return FSQuantizer(cfg, dims) if cfg.kind == "fsq" else VectorQuantizer(cfg)


class VQVAE(nn.Module):
    """``forward(x (B, 1, S, S) in [0, 1]) -> VQOutput``; with ``cfg.dims == 3`` volumes
    ``(B, 1, X, Y, Z)`` and code grids ``(B, gx, gy, gz)`` in place of images and grids."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.quantizer.dim
        if cfg.arch == "seed":
            self.encoder: nn.Module = SeedEncoder(dim, cfg.widths)
            self.decoder: nn.Module = SeedDecoder(dim, tuple(reversed(cfg.widths)))
        elif cfg.arch == "resnet":
            self.encoder = ResEncoder(
                dim, cfg.widths, cfg.blocks, cfg.mid_blocks, cfg.full_res, cfg.dims
            )
            self.decoder = ResDecoder(
                dim,
                cfg.widths,
                cfg.blocks if cfg.decoder_blocks is None else cfg.decoder_blocks,
                cfg.mid_blocks if cfg.decoder_mid_blocks is None else cfg.decoder_mid_blocks,
                cfg.upsample,
                cfg.full_res,
                cfg.dims,
            )
        else:
            raise ValueError(f"unknown arch {cfg.arch!r}")
        self.quantizer = build_quantizer(cfg.quantizer, cfg.dims)
        if cfg.adversarial_weight > 0:
            self.discriminator = PatchDiscriminator(cfg.discriminator_width, dims=cfg.dims)
        self.codes_frozen = False

    def decoder_output_weight(self) -> nn.Parameter:
        """The weight of the decoder's last layer (the one that writes the image)."""
        return [p for name, p in self.decoder.named_parameters() if name.endswith("weight")][-1]

    def freeze_codes(self) -> None:
        """Fix the encoder and the codebook (no gradients, no EMA updates, no restarts), so
        that training changes the decoder alone and every image keeps its codes."""
        for p in [*self.encoder.parameters(), *self.quantizer.parameters()]:
            p.requires_grad_(False)
        self.codes_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> VQVAE:
        super().train(mode)
        if self.codes_frozen:
            self.encoder.eval()
            self.quantizer.eval()
        return self

    def encode_latent(self, x: Tensor) -> Tensor:
        """``(B, 1, S, S)`` in [0, 1] -> continuous latent ``(B, D, h, w)``."""
        return self.encoder(x - 0.5)

    def decode_latent(self, z_q: Tensor) -> Tensor:
        """``(B, D, h, w)`` -> image ``(B, 1, S, S)``, ~[0, 1]."""
        return self.decoder(z_q) + 0.5

    def forward(self, x: Tensor) -> VQOutput:
        z_q, codes, vq_loss = self.quantizer(self.encode_latent(x))
        return VQOutput(self.decode_latent(z_q), codes, vq_loss)

    def encode(self, x: Tensor) -> Tensor:
        """Images ``(B, 1, S, S)`` in [0, 1] -> codes ``(B, h, w)`` int64."""
        return self.quantizer(self.encode_latent(x))[1]

    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``(B, h, w)`` -> images ``(B, 1, S, S)`` clamped to [0, 1]."""
        return self.decode_latent(self.quantizer.lookup(codes)).clamp(0, 1)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
