"""Vector quantizer with EMA codebook updates, k-means initialisation and dead-code restarts.

With ``normalize`` the encoder outputs and the codes live on the unit sphere (the
l2-normalised codebook of ViT-VQGAN, Yu et al. 2022): the nearest code is the most
similar in direction, the latents' norm cannot drift away from the codebook, and the
decoder always reads unit vectors.

Distances are always computed in fp32, also under bf16/fp16 autocast. Under
``torch.distributed`` the codebook statistics are all-reduced and the k-means
initialisation and restarts are broadcast from rank 0, so every rank holds the same
codebook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from oasisvq.errors import ConfigError

QUANTIZERS = ("vq", "fsq")


@dataclass
class QuantizerConfig:
    codebook_size: int = 16  # "fsq": always prod(levels), whatever is given
    dim: int = 16  # channels of the encoder's output and of the decoder's input
    kind: str = "vq"  # "vq" (a learnt codebook, this module) or "fsq" (fixed levels, fsq.py)
    levels: tuple[int, ...] = ()  # "fsq" only: levels per quantized channel, e.g. (8, 8, 8)
    beta: float = 0.25  # commitment weight
    update: str = "ema"  # "ema" (moving averages) or "loss" (codebook loss, as in the VQ-VAE paper)
    decay: float = 0.99  # EMA decay
    kmeans_init: bool = True  # initialise codes by k-means on the first batch of encoder outputs
    restart_threshold: float = 1.0  # EMA count below which a code is dead and restarted (0 = never)
    normalize: bool = False  # l2-normalise latents and codes: nearest code by cosine similarity

    def __post_init__(self) -> None:
        # from_dict passes JSON lists; configs saved before "kind" existed are "vq"
        self.levels = tuple(int(v) for v in self.levels)
        if self.kind not in QUANTIZERS:
            raise ConfigError(
                f"quantizer kind {self.kind!r}: expected one of {', '.join(QUANTIZERS)}"
            )
        if self.kind == "vq":
            if self.levels:
                raise ConfigError(
                    f"quantizer levels {self.levels}: levels belong to kind 'fsq', not 'vq'"
                )
            return
        if not self.levels or min(self.levels) < 2:
            raise ConfigError(
                f"fsq levels {self.levels}: expected one or more level counts, each at least 2, "
                "e.g. (8, 8, 8)"
            )
        self.codebook_size = math.prod(self.levels)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce_(t: Tensor) -> Tensor:
    if _distributed():
        dist.all_reduce(t)
    return t


def _broadcast_(t: Tensor) -> Tensor:
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def _world() -> tuple[int, int]:
    return (dist.get_world_size(), dist.get_rank()) if _distributed() else (1, 0)


# Row order of the global batch. The engine's DistributedSampler gives rank r the samples
# r, r + W, r + 2W, ... of the global batch, so with ``per_sample`` rows per sample, global
# row g is row ((g // per_sample) // W) * per_sample + g % per_sample of rank
# (g // per_sample) % W. Gathering in this order lets W processes draw the same rows as
# one process with the whole batch; the codebook is identical on every rank either way.


def _gather_rows(x: Tensor, per_sample: int) -> Tensor:
    """The ``(n, D)`` rows of every rank (same n on each rank) in global-batch order."""
    world, _ = _world()
    if world == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(out, x.contiguous())
    d = x.shape[1]
    return torch.stack(out).view(world, -1, per_sample, d).transpose(0, 1).reshape(-1, d)


def _global_rows(x: Tensor, index: Tensor, per_sample: int) -> Tensor:
    """Rows ``index`` of the global batch (see above), on every rank, without gathering it:
    each rank fills the rows it holds, zeros elsewhere, and a sum all-reduce merges them."""
    world, rank = _world()
    if world == 1:
        return x[index]
    sample, pos = index // per_sample, index % per_sample
    rows = x[(sample // world) * per_sample + pos]
    return _all_reduce_(
        torch.where((sample % world == rank).unsqueeze(1), rows, torch.zeros_like(rows))
    )


def kmeans(x: Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """k-means with k-means++ seeding on rows of ``x (n, D)``; returns ``(k, D)`` centres."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centres = x[first : first + 1]
    d2 = (x - centres).pow(2).sum(1)
    for _ in range(1, k):  # k-means++: next centre drawn with probability ~ squared distance
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / n)
        nxt = int(torch.multinomial(p.cpu(), 1, generator=generator))
        centres = torch.cat([centres, x[nxt : nxt + 1]])
        d2 = torch.minimum(d2, (x - x[nxt]).pow(2).sum(1))
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1).to(x.dtype)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres


class VectorQuantizer(nn.Module):
    """Maps ``z (B, D, H, W)`` to its nearest codes.

    Returns ``(z_q (B, D, H, W), codes (B, H, W) int64, loss scalar)``; ``z_q`` carries
    straight-through gradients to ``z``.
    """

    def __init__(self, cfg: QuantizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        k, d = cfg.codebook_size, cfg.dim
        embed = torch.randn(k, d) / d**0.5
        if cfg.update == "ema":
            self.register_buffer("embed", embed)
            self.register_buffer("ema_count", torch.ones(k))
            self.register_buffer("ema_sum", embed.clone())
        elif cfg.update == "loss":
            self.embed = nn.Parameter(embed)
        else:
            raise ValueError(f"quantizer update {cfg.update!r}: expected 'ema' or 'loss'")
        self.register_buffer("initialised", torch.tensor(not cfg.kmeans_init))

    def lookup(self, codes: Tensor) -> Tensor:
        """``codes (B, *grid)`` -> ``(B, D, *grid)`` code vectors (2D or 3D grids)."""
        return F.embedding(codes, self._on_sphere(self.embed)).movedim(-1, 1)

    def nearest(self, flat: Tensor) -> Tensor:
        """``flat (n, D)`` fp32 -> code index ``(n,)``, squared-Euclidean, fp32."""
        e = self._on_sphere(self.embed.float())
        dist2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)
        return dist2.argmin(1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``z (B, D, *grid)`` -> ``z_q`` (same shape), ``codes (B, *grid)``, loss."""
        b, d, *grid = z.shape
        cells = math.prod(grid)
        with torch.autocast(z.device.type, enabled=False):
            flat = z.float().movedim(1, -1).reshape(-1, d)  # (B * cells, D)
            flat = self._on_sphere(flat)
            if self.training and not bool(self.initialised):
                self._kmeans_init(flat.detach(), cells)
            codes = self.nearest(flat.detach())
            if self.training and self.cfg.update == "ema":
                self._ema_update(flat.detach(), codes, cells)
            q = F.embedding(codes, self._on_sphere(self.embed.float()))
            loss = self.cfg.beta * F.mse_loss(flat, q.detach())
            if self.cfg.update == "loss":
                loss = loss + F.mse_loss(q, flat.detach())
            q = flat + (q - flat).detach()  # straight-through
        z_q = q.view(b, *grid, d).movedim(-1, 1).to(z.dtype)
        return z_q, codes.view(b, *grid), loss

    def _on_sphere(self, rows: Tensor) -> Tensor:
        """Rows ``(n, D)`` (latents or codes) projected to unit length when ``normalize``,
        else unchanged."""
        return F.normalize(rows, dim=1) if self.cfg.normalize else rows

    @torch.no_grad()
    def _kmeans_init(self, flat: Tensor, per_sample: int) -> None:
        centres = self._on_sphere(kmeans(_gather_rows(flat, per_sample), self.cfg.codebook_size))
        _broadcast_(centres)
        self.embed.data.copy_(centres)
        if self.cfg.update == "ema":
            self.ema_sum.copy_(centres)
            self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, codes: Tensor, per_sample: int) -> None:
        k, decay = self.cfg.codebook_size, self.cfg.decay
        onehot_sum = torch.zeros(k, flat.shape[1], device=flat.device).index_add_(0, codes, flat)
        counts = torch.bincount(codes, minlength=k).float()
        _all_reduce_(onehot_sum)
        _all_reduce_(counts)
        self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(onehot_sum, alpha=1 - decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + k * 1e-5) * n  # Laplace smoothing
        self.embed.copy_(self._on_sphere(self.ema_sum / smoothed.unsqueeze(1)))
        if self.cfg.restart_threshold > 0:
            self._restart_dead(flat, per_sample)

    @torch.no_grad()
    def _restart_dead(self, flat: Tensor, per_sample: int) -> None:
        dead = self.ema_count < self.cfg.restart_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        # random rows of the global batch: rank 0's draw, as one process would draw them
        pick = torch.randint(flat.shape[0] * _world()[0], (n_dead,), device="cpu").to(flat.device)
        fresh = _global_rows(flat, _broadcast_(pick), per_sample)
        self.embed[dead] = fresh
        self.ema_sum[dead] = fresh
        self.ema_count[dead] = 1.0
