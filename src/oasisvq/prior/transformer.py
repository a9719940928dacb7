"""A small GPT-style decoder over the raster-flattened code grid.

Slot ``t`` of the input holds the code of cell ``t - 1`` (slot 0 holds the start
token, built from the condition) plus the position embedding of cell ``t`` (one
embedding per grid axis, summed: row + column on 2D grids, + depth on 3D grids of
volumes), and the output at slot ``t`` predicts the code of cell ``t``. Causal
self-attention sees every earlier cell, so unlike the PixelCNN there is no blind spot.

    codes (B, *grid) -> (B, T = prod(grid)) -> [c, emb(c_0), ..., emb(c_{T-2})] + pos (+ c)
    -> n_layers x [x + attn(ln(x)); x + mlp(ln(x))] -> ln -> linear -> (B, *grid, K)

With ``cond_at="every"`` the condition ``c`` is also added to every slot's input. As the
start token alone it reaches a cell only through attention, diluted among thousands of
cells on a 3D grid: a prior of whole volumes conditioned that way learnt sex but hardly
age (docs/volumes.md).

Attention is grouped-query attention with ``n_kv_heads`` key/value heads (1 = multi-query):
the KV cache that sampling keeps is ``n_heads / n_kv_heads`` times smaller than in
plain multi-head attention, which is what makes drawing 32x32 grids on a CPU
affordable. Sampling feeds one cell at a time and reuses the cached keys and values
of all earlier cells; the tests check that this gives the logits of a full forward
pass. Inpainting takes the same path, keeping the cells that are not masked: a masked
cell is drawn given every cell before it, never those after it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oasisvq.prior.base import Cond, ConditionEmbedding, Draw, GuidedBatch, Prior, last_masked
from oasisvq.prior.config import PriorConfig


class KVCache:
    """Keys and values of one layer: ``(B, n_kv_heads, T, head_dim)`` each, filled left to right."""

    def __init__(
        self,
        batch: int,
        n_kv: int,
        length: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.k = torch.empty(batch, n_kv, length, head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)


class SelfAttention(nn.Module):
    """Grouped-query self-attention; ``causal``: each slot attends to itself and earlier
    slots only (the masked prior uses ``causal=False``: every slot sees every slot)."""

    def __init__(self, cfg: PriorConfig, causal: bool = True) -> None:
        super().__init__()
        self.causal = causal
        d, h, g = cfg.d_model, cfg.n_heads, cfg.n_kv_heads
        if d % h or h % g:
            raise ValueError(
                f"d_model {d} must divide by n_heads {h}, and n_heads by n_kv_heads {g}"
            )
        self.n_heads, self.n_kv, self.head_dim = h, g, d // h
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * g * self.head_dim)
        self.proj = nn.Linear(d, d)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None, t: int = 0) -> Tensor:
        """Full pass: ``x (B, T, d)``. Cached step (causal only): ``x (B, 1, d)`` is slot ``t``;
        its keys/values are written to ``cache`` and it attends to slots ``0..t``."""
        b, n, d = x.shape
        hd, g, rep = self.head_dim, self.n_kv, self.n_heads // self.n_kv
        q = self.q(x).view(b, n, g, rep, hd)
        k, v = self.kv(x).view(b, n, 2, g, hd).permute(2, 0, 3, 1, 4)  # each (B, g, n, hd)
        if cache is None:
            q = q.permute(0, 2, 3, 1, 4).reshape(b, g * rep, n, hd)  # (B, H, T, hd)
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
            # no dropout on the attention weights: with it, SDPA falls back to the kernel that
            # materialises the (T, T) matrix, which makes a training step ~2.6x slower on CPU
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
            y = y.transpose(1, 2).reshape(b, n, d)
        else:
            cache.k[:, :, t : t + 1] = k
            cache.v[:, :, t : t + 1] = v
            # the rep query heads of a KV group act as rep query positions over one shared
            # cache; plain batched matmuls beat SDPA's kernels for one query row on CPUs
            q = q.view(b, g, rep, hd).to(cache.k.dtype) * hd**-0.5
            att = q @ cache.k[:, :, : t + 1].transpose(-1, -2)  # (B, g, rep, t+1)
            y = (att.softmax(-1) @ cache.v[:, :, : t + 1]).reshape(b, 1, d)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: PriorConfig, causal: bool = True) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg, causal)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, cache: KVCache | None = None, t: int = 0) -> Tensor:
        x = x + self.attn(self.ln1(x), cache, t)
        return x + self.mlp(self.ln2(x))


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, 0.0, 0.02)


def gpt_init(model: nn.Module, n_layers: int) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases, and the residual
    projections scaled down by depth."""
    model.apply(_init)
    for name, p in model.named_parameters():
        if name.endswith("proj.weight"):
            nn.init.normal_(p, 0.0, 0.02 / (2 * n_layers) ** 0.5)


class TransformerPrior(Prior):
    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, grid = cfg.d_model, cfg.grid
        self.tok = nn.Embedding(cfg.codebook_size, d)
        self.row = nn.Embedding(grid[0], d)
        self.col = nn.Embedding(grid[1], d)
        if len(grid) == 3:
            self.depth = nn.Embedding(grid[2], d)
        self.cond = ConditionEmbedding(cfg, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.codebook_size, bias=False)
        gpt_init(self, cfg.n_layers)

    def positions(self) -> Tensor:
        """Position embedding of every cell in raster order (last axis fastest), ``(T, d)``."""
        pos = self.row.weight[:, None, :] + self.col.weight[None, :, :]  # (h, w, d)
        if len(self.cfg.grid) == 3:
            pos = pos[:, :, None, :] + self.depth.weight[None, None, :, :]  # (gx, gy, gz, d)
        return pos.reshape(self.cfg.cells, -1)

    def _logits(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def forward_embedded(self, emb: Tensor, cond: Cond | None = None) -> Tensor:
        """``emb (B, T, d)``: the embeddings of cells ``0..T-1`` -> logits ``(B, *grid, K)``.
        The embedding of the last cell is not used (nothing comes after it)."""
        b = emb.shape[0]
        c = self.cond(cond, b)[:, None].to(emb.dtype)  # (B, 1, d)
        x = torch.cat([c, emb[:, :-1]], 1) + self.positions()
        if self.cfg.cond_at == "every":
            x = x + c
        return self._logits(self.drop(x)).view(b, *self.cfg.grid, -1)

    def _inputs(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """The first slot's input and what every later slot adds to its cell embedding:
        ``c (B, d)`` -> ``(B, d)`` and ``(T, d)`` or ``(B, T, d)``."""
        pos = self.positions()
        if self.cfg.cond_at == "every":  # slot 0: the start token c, plus c as every slot
            return c + c + pos[0], pos[None] + c[:, None]
        return c + pos[0], pos

    def forward(self, codes: Tensor, cond: Cond | None = None) -> Tensor:
        """``codes (B, *grid)`` int64 -> logits ``(B, *grid, K)``."""
        return self.forward_embedded(self.tok(codes.flatten(1)), cond)

    def forward_onehot(self, x: Tensor, cond: Cond | None = None) -> Tensor:
        """``x (B, K, h, w)`` one-hot (or any float) -> logits ``(B, h, w, K)``; for gradient checks."""
        return self.forward_embedded(x.flatten(2).transpose(1, 2) @ self.tok.weight, cond)

    # ------------------------------------------------------------------ cached decoding
    def new_cache(self, batch: int) -> list[KVCache]:
        attn = self.blocks[0].attn
        p = self.head.weight
        return [
            KVCache(batch, attn.n_kv, self.cfg.cells, attn.head_dim, p.device, p.dtype)
            for _ in self.blocks
        ]

    def step(self, x: Tensor, t: int, cache: list[KVCache]) -> Tensor:
        """One slot: ``x (B, d)`` is the input of slot ``t`` (embedding of cell t-1, or the
        start token, plus the position of cell t and, with ``cond_at="every"``, the
        condition; see ``_inputs``). Returns the logits of cell ``t``, ``(B, K)``."""
        x = x[:, None]
        for block, kv in zip(self.blocks, cache, strict=True):
            x = block(x, kv, t)
        return self.head(self.ln_f(x[:, 0]))

    @torch.no_grad()
    def forward_cached(self, codes: Tensor, cond: Cond | None = None) -> Tensor:
        """The logits of ``forward``, computed one cell at a time through the KV cache
        (teacher forcing); the path sampling takes. ``(B, h, w)`` -> ``(B, h, w, K)``."""
        b = codes.shape[0]
        flat, cache = codes.flatten(1), self.new_cache(b)
        x, pos = self._inputs(self.cond(cond, b))
        out = []
        for t in range(self.cfg.cells):
            out.append(self.step(x, t, cache))
            if t + 1 < self.cfg.cells:
                x = self.tok(flat[:, t]) + pos[..., t + 1, :]
        return torch.stack(out, 1).view(*codes.shape, -1)

    @torch.no_grad()
    def fill(
        self, codes: Tensor, mask: Tensor, batch: GuidedBatch, draw: Draw, steps: int | None
    ) -> Tensor:
        """Draw the masked cells of ``codes (n, h, w)`` one at a time in raster order, each
        given all cells before it, with a KV cache; stops after the last masked cell. With
        guidance the batch holds each grid twice (conditional, unknown). ``steps`` is
        ignored (one cell per step)."""
        n = codes.shape[0]
        rows = batch.copies * n
        out, todo = codes.flatten(1).clone(), mask.flatten(1)
        cache = self.new_cache(rows)
        x, pos = self._inputs(self.cond(batch.cond, rows))
        for t in range(last_masked(mask) + 1):
            logits = batch.logits(self.step(x, t, cache))  # (rows, K) -> (n, K)
            out[:, t] = torch.where(todo[:, t], draw.pick(logits), out[:, t])
            if t + 1 < self.cfg.cells:
                x = self.tok(out[:, t].repeat(batch.copies)) + pos[..., t + 1, :]
        return out.view_as(codes)
