"""Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE
Made Simple").

Each of ``C = len(levels)`` latent channels is bounded to a small interval and rounded
to one of ``levels[c]`` equally spaced values: the code grid is the product of these
per-channel grids, ``codebook_size = prod(levels)`` codes, with nothing learnt, no
codebook loss, no EMA and no restarts, so no code can die.

    z (B, D, H, W) -> 1x1 projection to C channels (none when D == C)
    -> bound: tanh(z + shift) * half_l - offset   (half_l = (L - 1)(1 + eps) / 2)
    -> round, straight-through                     (integers -L//2 .. (L-1)//2)
    -> / (L // 2)                                  (values in [-1, 1])
    -> 1x1 projection back to D channels -> z_q (B, D, H, W)

For an even level count ``L`` the rounded values are not symmetric around 0
(``-L/2 .. L/2 - 1``): ``offset = 0.5`` moves the bounded interval by half a step and
``shift = atanh(offset / half_l)`` keeps 0 mapped to 0, as in the paper's reference code.
The code index of a cell is the mixed-radix number of its level indices
``(value + L // 2)``, channel 0 least significant: an exact bijection between
``[0, prod(levels))`` and level tuples.

Bounding and rounding run in fp32 also under autocast, as the VQ quantizer's distances do.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from oasisvq.model.quantizer import QuantizerConfig

BOUND_EPS = 1e-3  # widens the bound a little so the outermost levels are reached


def round_ste(x: Tensor) -> Tensor:
    """Round to the nearest integer; the gradient passes through unchanged."""
    return x + (x.round() - x).detach()


class FSQuantizer(nn.Module):
    """Maps ``z (B, D, H, W)`` to its nearest point of the level grid.

    Returns ``(z_q (B, D, H, W), codes (B, H, W) int64 in [0, prod(levels)), loss)``, the
    interface of :class:`oasisvq.model.quantizer.VectorQuantizer`; ``loss`` is a zero
    scalar (there is no codebook to pull towards), ``z_q`` carries straight-through
    gradients to ``z``.
    """

    def __init__(self, cfg: QuantizerConfig, dims: int = 2) -> None:
        super().__init__()
        self.cfg = cfg
        levels = torch.tensor(cfg.levels, dtype=torch.long)
        basis = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), levels[:-1]]), 0)
        # fixed by the config: not saved in checkpoints
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("basis", basis, persistent=False)
        c = len(cfg.levels)
        same = cfg.dim == c
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.project_in = nn.Identity() if same else conv(cfg.dim, c, 1)
        self.project_out = nn.Identity() if same else conv(c, cfg.dim, 1)

    @property
    def half_width(self) -> Tensor:
        """``L // 2`` per channel, ``(C,)`` fp32: the scale from integers to [-1, 1]."""
        return (self.levels // 2).float()

    def bound(self, z: Tensor) -> Tensor:
        """``z (..., C)`` fp32 -> values in ``(-L//2 - 1/2, (L-1)//2 + 1/2)`` per channel,
        0 kept at 0, so that rounding gives exactly ``L`` integers."""
        levels = self.levels.float()
        half_l = (levels - 1) * (1 + BOUND_EPS) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def quantize(self, z: Tensor) -> Tensor:
        """``z (..., C)`` -> quantized values in [-1, 1], ``(..., C)`` fp32, straight-through."""
        return round_ste(self.bound(z.float())) / self.half_width

    def vectors_to_codes(self, q: Tensor) -> Tensor:
        """Quantized values ``(..., C)`` -> code indices ``(...)`` int64."""
        idx = (q.float() * self.half_width + self.half_width).round().long()
        return (idx * self.basis).sum(-1)

    def codes_to_vectors(self, codes: Tensor) -> Tensor:
        """Code indices ``(...)`` in ``[0, prod(levels))`` -> quantized values ``(..., C)``
        fp32 in [-1, 1]; the inverse of ``vectors_to_codes``."""
        idx = (codes.long()[..., None] // self.basis) % self.levels
        return (idx.float() - self.half_width) / self.half_width

    def lookup(self, codes: Tensor) -> Tensor:
        """``codes (B, *grid)`` -> the decoder's input ``(B, D, *grid)``."""
        q = self.codes_to_vectors(codes).movedim(-1, 1)
        return self.project_out(q.to(self._weight_dtype()))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        zc = self.project_in(z)
        with torch.autocast(z.device.type, enabled=False):
            q = self.quantize(zc.float().movedim(1, -1))  # (B, *grid, C)
            codes = self.vectors_to_codes(q.detach())
        z_q = self.project_out(q.movedim(-1, 1).to(zc.dtype))
        return z_q, codes, z.new_zeros((), dtype=torch.float32)

    def _weight_dtype(self) -> torch.dtype:
        p = next(self.project_out.parameters(), None)
        return torch.float32 if p is None else p.dtype
