"""The report's PixelCNN over the code grid (van den Oord et al. 2016, as in the Keras
VQ-VAE example the report followed).

    one-hot codes (B, K, h, w)
    -> masked conv type A, 7x7, ``filters``, ReLU
    -> ``residual_blocks`` x [1x1 conv (filters) ReLU -> masked type B 3x3 (filters/2) ReLU
                              -> 1x1 conv (filters) ReLU, + skip]
    -> ``head_layers`` x masked type B 1x1 conv (filters), ReLU
    -> 1x1 conv -> logits (B, K, h, w)

The first layer's convolution over one-hot codes is computed as a sum of embedding
rows (``MaskedConv2d.on_codes``): the same function and weights, without the dense
``(B, K, h, w)`` input, which dominates the cost at K = 256 or 512 codes.

Type A masks hide the centre and everything after it in raster order; type B masks
show the centre. Stacked masked convolutions of this kind have a *blind spot*: cells
up and to the right of the current one, beyond the kernel's reach, are never seen.
The tests check both the causality and the blind spot.

A conditional PixelCNN adds a learned per-channel bias computed from the condition
embedding after the first layer and inside every residual block (van den Oord et
al.'s conditional PixelCNN); the unconditional network is exactly the report's.

Inpainting draws the masked cells in the same order, keeping the others: a masked cell
is drawn given the cells before it (within the network's view), never those after it.

Sampling recomputes, for each cell, only the rows that can reach it: the receptive
field of row ``r`` spans rows ``r - (first_kernel // 2 + residual_blocks) .. r``,
so the network runs on that band instead of the whole grid. The result is exactly
what a full forward pass gives (tested), at a cost per cell independent of the
grid height.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oasisvq.prior.base import (
    DEFAULT_OPTIONS,
    Cond,
    ConditionEmbedding,
    Draw,
    GuidedBatch,
    Prior,
    SamplingOptions,
    guided_batch,
    last_masked,
)
from oasisvq.prior.config import PriorConfig


class MaskedConv2d(nn.Conv2d):
    """Conv with a raster-order mask; ``mask_type`` "A" excludes the centre, "B" includes it."""

    def __init__(self, mask_type: str, cin: int, cout: int, kernel: int) -> None:
        super().__init__(cin, cout, kernel, padding=kernel // 2)
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type {mask_type!r}: expected 'A' or 'B'")
        mask = torch.zeros(1, 1, kernel, kernel)
        c = kernel // 2
        mask[..., :c, :] = 1
        mask[..., c, :c] = 1
        if mask_type == "B":
            mask[..., c, c] = 1
        self.register_buffer("mask", mask, persistent=False)
        self.taps = mask.flatten().nonzero().squeeze(1).tolist()  # unmasked taps, for on_codes

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

    def on_codes(self, codes: Tensor) -> Tensor:
        """``forward(one_hot(codes))`` without the one-hot tensor: ``codes (B, h, w)`` int64
        in ``[0, in_channels)`` -> ``(B, out_channels, h, w)``.

        A convolution over one-hot input adds, for every unmasked tap of the kernel, the
        weight column of the code under that tap. Each tap is an embedding table and
        ``F.embedding_bag`` sums the rows the codes pick: T * C additions per cell instead
        of the dense convolution's k * k * K * C multiply-adds (T = 24 of the 49 taps of the
        7x7 type A layer, which dominates the dense PixelCNN at K = 256)."""
        k, p = self.kernel_size[0], self.padding[0]
        n_codes, c_out = self.in_channels, self.out_channels
        taps = self.taps  # T unmasked taps, computed once (no device sync per call)
        weight = self.weight.permute(2, 3, 1, 0).reshape(k * k, n_codes, c_out)[taps]  # (T, K, C)
        table = F.pad(weight, (0, 0, 0, 1)).reshape(-1, c_out)  # (T * (K+1), C); row K: padding
        b, h, w = codes.shape
        padded = F.pad(codes, (p, p, p, p), value=n_codes)  # (B, h+2p, w+2p)
        idx = torch.stack([padded[:, t // k : t // k + h, t % k : t % k + w] for t in taps], -1)
        idx = idx + torch.arange(len(taps), device=codes.device) * (n_codes + 1)  # (B, h, w, T)
        out = F.embedding_bag(idx.reshape(-1, len(taps)), table, mode="sum")  # (B*h*w, C)
        return (out.view(b, h, w, c_out) + self.bias).permute(0, 3, 1, 2)


class ResidualBlock(nn.Module):
    """``x + relu(1x1(relu(maskedB3x3(relu(1x1(x))))))``; x: ``(B, filters, h, w)``."""

    def __init__(self, filters: int, cond_dim: int | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(filters, filters, 1)
        self.pixel_conv = MaskedConv2d("B", filters, filters // 2, 3)
        self.conv2 = nn.Conv2d(filters // 2, filters, 1)
        self.cond = nn.Linear(cond_dim, filters // 2) if cond_dim else None

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        h = self.pixel_conv(F.relu(self.conv1(x)))
        if self.cond is not None and c is not None:
            h = h + self.cond(c)[:, :, None, None]
        h = F.relu(self.conv2(F.relu(h)))
        return x + h


class PixelCNN(Prior):
    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        k, f = cfg.codebook_size, cfg.filters
        cond_dim = f if cfg.condition else None
        self.cond = ConditionEmbedding(cfg, f) if cfg.condition else None
        self.first = MaskedConv2d("A", k, f, cfg.first_kernel)
        self.first_cond = nn.Linear(f, f) if cond_dim else None
        self.blocks = nn.ModuleList(ResidualBlock(f, cond_dim) for _ in range(cfg.residual_blocks))
        self.head = nn.ModuleList(MaskedConv2d("B", f, f, 1) for _ in range(cfg.head_layers))
        self.out = nn.Conv2d(f, k, 1)

    @property
    def reach_rows(self) -> int:
        """How many rows above a cell can influence its logits."""
        return self.cfg.first_kernel // 2 + self.cfg.residual_blocks

    def forward_onehot(self, x: Tensor, cond: Cond | None = None) -> Tensor:
        """``x (B, K, h', w)`` one-hot (or any float) -> logits ``(B, K, h', w)``."""
        return self._after_first(self.first(x), cond)

    def forward_codes(self, codes: Tensor, cond: Cond | None = None) -> Tensor:
        """``codes (B, h', w)`` int64 -> logits ``(B, K, h', w)``; equals ``forward_onehot``
        of their one-hot encoding, at a fraction of the first layer's cost."""
        return self._after_first(self.first.on_codes(codes), cond)

    def _after_first(self, h: Tensor, cond: Cond | None) -> Tensor:
        """First layer's output ``h (B, filters, h', w)`` -> logits ``(B, K, h', w)``."""
        c = self.cond(cond, h.shape[0]) if self.cond is not None else None
        if self.first_cond is not None:
            h = h + self.first_cond(c)[:, :, None, None]
        h = F.relu(h)
        for block in self.blocks:
            h = block(h, c)
        for layer in self.head:
            h = F.relu(layer(h))
        return self.out(h)

    def forward(self, codes: Tensor, cond: Cond | None = None) -> Tensor:
        """``codes (B, h, w)`` int64 -> logits ``(B, h, w, K)``."""
        return self.forward_codes(codes, cond).permute(0, 2, 3, 1)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: Cond | None = None,
        options: SamplingOptions = DEFAULT_OPTIONS,
        generator: torch.Generator | None = None,
        window: bool = True,
    ) -> Tensor:
        """``n`` grids ``(n, h, w)``, as ``Prior.sample``. ``window=False`` runs the whole
        grid for every cell (the naive way, kept for the benchmark)."""
        codes, mask = self.blank(n)
        batch = guided_batch(self.cfg, cond, n, options.guidance)
        return self.fill(codes, mask, batch, Draw.of(options, generator), options.steps, window)

    @torch.no_grad()
    def fill(
        self,
        codes: Tensor,
        mask: Tensor,
        batch: GuidedBatch,
        draw: Draw,
        steps: int | None = None,
        window: bool = True,
    ) -> Tensor:
        """Draw the masked cells of ``codes (n, h, w)`` one at a time in raster order, each
        given the cells before it that the network sees (a blind spot excepted), up to the
        last masked cell. With guidance the batch holds each grid twice (conditional,
        unknown). ``steps`` is ignored (one cell per step)."""
        hh, ww = self.cfg.grid
        n = codes.shape[0]
        out = codes.repeat(batch.copies, 1, 1)
        for t in range(last_masked(mask) + 1):
            r, col = divmod(t, ww)
            top = max(0, r - self.reach_rows) if window else 0
            bottom = r + 1 if window else hh
            logits = self.forward_codes(out[:, top:bottom], batch.cond)
            logits = batch.logits(logits[:, :, r - top, col])  # (rows, K) -> (n, K)
            drawn = torch.where(mask[:, r, col], draw.pick(logits), out[:n, r, col])
            out[:, r, col] = drawn.repeat(batch.copies)
        return out[:n]
