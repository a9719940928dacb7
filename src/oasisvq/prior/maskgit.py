"""MaskGIT (Chang et al. 2022): a bidirectional transformer over the code grid that
predicts masked cells from all the others, sampled in a few parallel steps.

    codes (B, *grid), masked cells = K -> tokens of p**ndim cells (sum of one embedding per
    cell of the token) + position (+ condition, cond_at="every") -> [condition token,
    tokens] -> n_layers x [bidirectional attention, MLP] -> ln -> per-cell features
    -> linear -> logits (B, *grid, K)

Grids of any number of axes (2D ``(h, w)``, 3D ``(d, h, w)``) are flattened in C order;
the position of a token is the sum of one learnt embedding per axis. A token holds a
patch of ``p`` cells along every axis (``patch``; 0 picks a power of two from 2 up, where
the grid allows, that leaves at most ``AUTO_TOKENS`` tokens; see ``auto_patch``): a step costs
``cells / p**ndim`` token passes (attention their square), not ``cells``, and the logits of a patch's cells come from
its token through a per-cell projection. Masks stay per cell: a token sums the
embeddings of its cells' codes or of "masked".

Training (``training_loss``): per grid a mask ratio ``r = cos(pi/2 * u)``, ``u ~ U(0, 1)``,
masks ``ceil(r * cells)`` cells at random; the loss is the cross-entropy on those cells.

Sampling (``fill``, for ``sample`` and ``inpaint``): start with every cell to draw masked;
at step ``s`` of ``S`` draw a code for every masked cell at once, then keep masked the
``floor(n0 * cos(pi/2 * (s+1)/S))`` cells of least confidence (log-probability of the
drawn code plus Gumbel noise scaled by ``choice_temperature * (1 - (s+1)/S)``), at least one
fewer than before, so the last step leaves none. Kept cells never change.

Likelihood: none exact. ``scores`` gives an unbiased Monte-Carlo estimate of an upper
bound on the NLL (the order-agnostic bound of Uria et al. 2014 / Hoogeboom et al. 2022):
with ``m ~ U{1..T}`` cells masked at random, ``(T / m) * sum of their cross-entropies``.
It bounds the model read as an any-order autoregressive model, not the distribution its
few-step sampler draws from.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oasisvq.errors import ConfigError
from oasisvq.prior.base import Cond, ConditionEmbedding, Draw, GuidedBatch, Prior, Scores
from oasisvq.prior.config import PriorConfig
from oasisvq.prior.transformer import Block, gpt_init

AUTO_TOKENS = 64  # automatic patch: at most this many tokens, and at least 2 cells a side
DRAW_CHUNK = 2048  # cells whose (cells, K) logits are drawn from at once when sampling


def auto_patch(grid: tuple[int, ...], patch: int = 0) -> int:
    """Cells per token along each axis: ``patch``, checked, or for 0 the smallest power of
    two from 2 up dividing every axis that leaves at most ``AUTO_TOKENS`` tokens (else the
    largest dividing every axis; 1 where 2 does not): 8x8 -> 2 (16 tokens), 16x16 -> 2
    (64), 32x32 -> 4 (64), 5x5 -> 1.

    A step's cost grows with the tokens (attention with their square), while cells drawn
    in the same step are drawn independently anyway, whether they share a token or not."""
    if patch < 0 or any(g % max(patch, 1) for g in grid):
        raise ConfigError(
            f"patch {patch}: expected 0 (automatic) or a size dividing every axis of the grid "
            f"{tuple(grid)}"
        )
    if patch:
        return patch
    p = 1
    while all(g % (2 * p) == 0 for g in grid) and (
        p == 1 or math.prod(grid) // p ** len(grid) > AUTO_TOKENS
    ):
        p *= 2
    return p


def patchify(x: Tensor, grid: tuple[int, ...], p: int) -> Tensor:
    """``(B, *grid, *rest) -> (B, N, p**ndim, *rest)``: tokens and the cells of a token
    both in C order."""
    b, nd = x.shape[0], len(grid)
    rest = x.shape[1 + nd :]
    x = x.reshape(b, *(s for g in grid for s in (g // p, p)), *rest)
    axes = [1 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)]
    x = x.permute(0, *axes, *range(1 + 2 * nd, x.ndim))
    return x.reshape(b, -1, p**nd, *rest)


def unpatchify(x: Tensor, grid: tuple[int, ...], p: int) -> Tensor:
    """The inverse of ``patchify``: ``(B, N, p**ndim, *rest) -> (B, *grid, *rest)``."""
    b, nd = x.shape[0], len(grid)
    rest = x.shape[3:]
    x = x.reshape(b, *(g // p for g in grid), *([p] * nd), *rest)
    axes = [a for i in range(nd) for a in (1 + i, 1 + nd + i)]
    x = x.permute(0, *axes, *range(1 + 2 * nd, x.ndim))
    return x.reshape(b, *grid, *rest)


def lowest(score: Tensor, m: Tensor) -> Tensor:
    """``(B, T)`` bool: the ``m[b]`` cells of lowest ``score (B, T)`` in each row; ties go
    to the earlier cell. ``m (B,)`` int64 in ``[0, T]``."""
    rank = score.argsort(dim=1, stable=True).argsort(dim=1)
    return rank < m[:, None]


def random_cells(m: Tensor, cells: int, generator: torch.Generator | None = None) -> Tensor:
    """``(B, cells)`` bool: ``m[b]`` cells of row ``b`` chosen uniformly at random."""
    u = torch.rand(len(m), cells, device=m.device, generator=generator)
    return lowest(u, m)


def cosine_ratio(u: Tensor | float) -> Tensor | float:
    """MaskGIT's schedule: the share of cells masked at progress ``u`` in [0, 1]."""
    return torch.cos(math.pi / 2 * u) if isinstance(u, Tensor) else math.cos(math.pi / 2 * u)


class MaskGITPrior(Prior):
    """``forward(codes (B, *grid) int64 in [0, K], cond, select) -> logits``: K marks a
    masked cell; the logits of every cell ``(B, *grid, K)``, or with ``select (B, *grid)``
    bool those of the selected cells, ``(n_selected, K)`` in C order."""

    likelihood = "upper bound"

    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, k = cfg.d_model, cfg.codebook_size
        self.patch = auto_patch(cfg.grid, cfg.patch)
        self.tokens = tuple(g // self.patch for g in cfg.grid)
        self.slots = self.patch ** len(cfg.grid)  # cells per token
        self.mask_id = k
        # one table per cell of a token, rows 0..K-1 its codes and row K "masked"
        self.tok = nn.Embedding(self.slots * (k + 1), d)
        self.register_buffer("offsets", torch.arange(self.slots) * (k + 1), persistent=False)
        self.axes = nn.ModuleList(nn.Embedding(n, d) for n in self.tokens)
        self.cond = ConditionEmbedding(cfg, d)
        self.drop = nn.Dropout(cfg.dropout)
        # plain multi-head attention: n_kv_heads shrinks a KV cache, and there is none here
        mha = dataclasses.replace(cfg, n_kv_heads=cfg.n_heads)
        self.blocks = nn.ModuleList(Block(mha, causal=False) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        cell_dim = d if self.slots == 1 else d // 2
        if self.slots > 1:  # token -> features of each of its cells
            self.unpatch = nn.Linear(d, self.slots * cell_dim)
            self.ln_cell = nn.LayerNorm(cell_dim)
        self.head = nn.Linear(cell_dim, k, bias=False)
        gpt_init(self, cfg.n_layers)

    # ------------------------------------------------------------------ network
    def positions(self) -> Tensor:
        """Position embedding of every token in C order, ``(N, d)``: the sum of one
        embedding per axis of the token grid."""
        nd, d, pos = len(self.tokens), self.cfg.d_model, 0
        for i, emb in enumerate(self.axes):
            shape = [1] * nd
            shape[i] = -1
            pos = pos + emb.weight.view(*shape, d)  # broadcasts to (*tokens, d)
        return pos.reshape(-1, d)

    def cell_features(self, codes: Tensor, cond: Cond | None = None) -> Tensor:
        """``codes (B, *grid)`` in [0, K] -> features ``(B, *grid, cell_dim)``."""
        b = codes.shape[0]
        cells = patchify(codes, self.cfg.grid, self.patch) + self.offsets  # (B, N, P)
        x = F.embedding_bag(cells.reshape(-1, self.slots), self.tok.weight, mode="sum")
        x = x.view(b, -1, self.cfg.d_model) + self.positions()
        start = self.cond(cond, b)[:, None].to(x.dtype)
        if self.cfg.cond_at == "every":
            x = x + start
        x = self.drop(torch.cat([start, x], 1))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x[:, 1:])  # (B, N, d); the condition token's output is not used
        if self.slots == 1:
            x = x[:, :, None]
        else:
            x = self.ln_cell(F.gelu(self.unpatch(x).unflatten(-1, (self.slots, -1))))
        return unpatchify(x, self.cfg.grid, self.patch)

    def forward(
        self, codes: Tensor, cond: Cond | None = None, select: Tensor | None = None
    ) -> Tensor:
        feats = self.cell_features(codes, cond)
        return self.head(feats if select is None else feats[select])

    # ------------------------------------------------------------------ training and scores
    def masked(
        self, codes: Tensor, m: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``m[b]`` random cells of each grid masked: ``(masked codes, mask)``, both ``(B, *grid)``."""
        mask = random_cells(m, self.cfg.cells, generator).view_as(codes)
        return codes.masked_fill(mask, self.mask_id), mask

    def training_loss(
        self, codes: Tensor, cond: Cond | None = None, forward: nn.Module | None = None
    ) -> Tensor:
        """Cross-entropy in nats per masked cell, a scalar, under the cosine schedule: per
        grid ``ceil(cos(pi/2 * u) * cells)`` cells masked, ``u ~ U(0, 1)``."""
        u = torch.rand(codes.shape[0], device=codes.device)
        m = (cosine_ratio(u) * self.cfg.cells).ceil().long().clamp(1, self.cfg.cells)
        inputs, mask = self.masked(codes, m)
        logits = (forward or self)(inputs, cond, select=mask)
        return F.cross_entropy(logits.float(), codes[mask])

    def scores(
        self, codes: Tensor, cond: Cond | None = None, generator: torch.Generator | None = None
    ) -> Scores:
        """Per grid: an unbiased estimate of an upper bound on its NLL in nats (module
        docstring), the masked cells predicted correctly and their number ``m``. Random
        (one draw of ``m`` and of the cells per grid): pass a seeded ``generator`` for
        repeatable values."""
        b, t = codes.shape[0], self.cfg.cells
        m = torch.randint(1, t + 1, (b,), device=codes.device, generator=generator)
        inputs, mask = self.masked(codes, m, generator)
        logits = self(inputs, cond, select=mask).float()
        target = codes[mask]
        row = torch.arange(b, device=codes.device).repeat_interleave(m)  # selection is row-major
        ce = F.cross_entropy(logits, target, reduction="none")
        nll = torch.zeros(b, device=codes.device).index_add_(0, row, ce) * t / m
        correct = torch.zeros_like(m).index_add_(0, row, (logits.argmax(-1) == target).long())
        return Scores(nll, correct, m)

    def nll(self, codes: Tensor, cond: Cond | None = None) -> Tensor:
        raise ConfigError(
            f"prior {self.cfg.name!r} is a masked prior without an exact likelihood; "
            "scores() gives an upper bound on the NLL"
        )

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def fill(
        self, codes: Tensor, mask: Tensor, batch: GuidedBatch, draw: Draw, steps: int | None
    ) -> Tensor:
        """Draw the cells of ``codes (n, *grid)`` where ``mask`` is True in ``steps``
        parallel steps (None: ``cfg.steps``), given every other cell (module docstring)."""
        steps, choice = self.decoding(steps, draw.choice_temperature)
        if steps < 1:
            raise ConfigError(f"steps {steps}: expected at least 1 (parallel decoding steps)")
        x = codes.flatten(1).masked_fill(mask.flatten(1), self.mask_id)  # (n, T)
        todo = mask.flatten(1).clone()
        n0 = todo.sum(1)
        for s in range(steps):
            if not bool(todo.any()):
                break
            ratio = (s + 1) / steps
            drawn, confidence = self._draw(
                self._todo_features(x, todo, batch), batch, draw, choice * (1 - ratio)
            )
            x[todo] = drawn
            keep = torch.minimum((n0 * cosine_ratio(ratio)).floor().long(), todo.sum(1) - 1)
            score = torch.full(x.shape, math.inf, device=x.device)  # kept cells: never masked
            score[todo] = confidence
            todo = lowest(score, keep.clamp(min=0))
            x = x.masked_fill(todo, self.mask_id)
        return x.view_as(codes)

    def decoding(self, steps: int | None, choice_temperature: float | None) -> tuple[int, float]:
        """The steps and choice temperature a draw uses: those given, else the prior's own."""
        steps = self.cfg.steps if steps is None else int(steps)
        choice = self.cfg.choice_temperature if choice_temperature is None else choice_temperature
        return steps, float(choice)

    def _todo_features(self, x: Tensor, todo: Tensor, batch: GuidedBatch) -> Tensor:
        """Features of the cells ``todo (n, T)`` of grids ``x (n, T)``, ``(copies, n_todo,
        cell_dim)``: with guidance every grid runs twice (its condition, then unknown)."""
        rows = (-1, *self.cfg.grid)
        feats = self.cell_features(x.repeat(batch.copies, 1).view(rows), batch.cond)
        return feats[todo.repeat(batch.copies, 1).view(rows)].view(
            batch.copies, -1, feats.shape[-1]
        )

    def _draw(
        self, feats: Tensor, batch: GuidedBatch, draw: Draw, noise: float
    ) -> tuple[Tensor, Tensor]:
        """A code and its confidence (with Gumbel ``noise``), both ``(n_todo,)``, for each
        cell of ``feats``; the logits are made ``DRAW_CHUNK`` cells at a time, so that on
        large codebooks the passes over them (softmax, cumulative sum, log-probability)
        stay in cache."""
        codes, confidence = [], []
        for i in range(0, feats.shape[1], DRAW_CHUNK):
            logits = batch.logits(self.head(feats[:, i : i + DRAW_CHUNK]).flatten(0, 1)).float()
            drawn, logp = draw.pick_with_logp(logits)
            codes.append(drawn)
            confidence.append(self._confidence(logp, noise, draw.generator))
        return torch.cat(codes), torch.cat(confidence)

    def _confidence(self, logp: Tensor, noise: float, generator: torch.Generator | None) -> Tensor:
        """Log-probability of each drawn code plus Gumbel noise, ``(n,)``: the noise
        (``choice_temperature`` times a factor fading to 0) makes early steps commit cells
        more at random than by confidence alone, which keeps samples diverse (MaskGIT's
        rule)."""
        u = torch.rand(logp.shape, device=logp.device, generator=generator)
        gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-7)))
        return logp + noise * gumbel
