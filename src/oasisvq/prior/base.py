"""What every prior shares: conditions, their embedding, the sampling rule and the NLL.

Conditions travel as a dict of per-example tensors (any key may be missing)::

    cond = {"class": (B,) int64,       # class index into cfg.class_names, -1 = unknown
            "position": (B,) float32,  # normalised slice position in [0, 1], NaN = unknown
            "age": (B,) float32,       # age in years, NaN = unknown
            "sex": (B,) int64}         # 0 = female, 1 = male (config.SEXES), -1 = unknown

A conditional prior is trained with each condition independently replaced by
"unknown" for ``cfg.cond_dropout`` of the examples, so it can also be sampled
without that condition (the marginal over it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oasisvq.errors import ConfigError
from oasisvq.prior.config import SEXES, PriorConfig

Cond = dict[str, Tensor]
N_FREQ = 4  # Fourier features of a scalar condition: u, sin(2 pi k u), cos(2 pi k u), k = 1..N_FREQ


def make_cond(
    n: int,
    class_index: int | None = None,
    position: float | None = None,
    age: float | None = None,
    device: torch.device | str = "cpu",
    sex: int | None = None,
) -> Cond:
    """The same condition for ``n`` examples; None means unknown."""
    cls = -1 if class_index is None else int(class_index)
    return {
        "sex": torch.full((n,), -1 if sex is None else int(sex), dtype=torch.long, device=device),
        "class": torch.full((n,), cls, dtype=torch.long, device=device),
        "position": torch.full(
            (n,), math.nan if position is None else float(position), device=device
        ),
        "age": torch.full((n,), math.nan if age is None else float(age), device=device),
    }


PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class SamplingOptions:
    """How codes are drawn from a prior and decoded: one value of each, end to end.

    temperature: softmax temperature (0 = the most likely code); top_k: draw among the
    k most likely codes only; guidance: classifier-free guidance of a conditional prior
    (1 = none, 0 = the marginal, above 1 = further towards the condition); steps:
    parallel decoding steps of a masked prior (None = its default); seed: the random
    stream (same seed and batch size, same samples; None = a fresh one); batch_size:
    grids drawn at once (None = by grid size); precision: the decoder's and a masked
    prior's network's ("auto" = bf16 where native); choice_temperature: the Gumbel noise
    on a masked prior's confidence in its first steps (None = its configured value; 0 =
    cells in order of confidence alone; large = cells in random order); texture: draw the
    run's fitted scan texture onto each decoded sample (``oasisvq fit-texture``; False =
    the decoder's mean). Invalid values raise ``ConfigError`` naming the option and its
    range.
    """

    temperature: float = 1.0
    top_k: int | None = None
    guidance: float = 1.0
    steps: int | None = None
    seed: int | None = 0
    batch_size: int | None = None
    precision: str = "auto"
    choice_temperature: float | None = None
    texture: bool = False

    def __post_init__(self) -> None:
        _check_number("--temperature", self.temperature, 0.0)
        if self.choice_temperature is not None:
            _check_number("--choice-temperature", self.choice_temperature, 0.0)
        _check_number("--guidance", self.guidance, 0.0)
        for flag, value in (
            ("--top-k", self.top_k),
            ("--steps", self.steps),
            ("--batch-size", self.batch_size),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{flag} {value}: expected a whole number >= 1")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"--precision {self.precision}: expected one of {', '.join(PRECISIONS)}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def _check_number(flag: str, value: float, low: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= low):
        raise ConfigError(f"{flag} {value}: expected a finite number >= {low:g}")


DEFAULT_OPTIONS = SamplingOptions()


def _fourier(u: Tensor) -> Tensor:
    """``(B,)`` in ~[0, 1] -> ``(B, 1 + 2 * N_FREQ)`` features."""
    k = torch.arange(1, N_FREQ + 1, device=u.device, dtype=u.dtype)
    ang = 2 * math.pi * u[:, None] * k
    return torch.cat([u[:, None], ang.sin(), ang.cos()], 1)


class ConditionEmbedding(nn.Module):
    """``cond -> (B, dim)``: a learned start vector plus one term per condition.

    class and sex: an embedding with one extra row for "unknown"; position and age: a linear
    map of Fourier features (age standardised with the training statistics), or a
    learned "unknown" vector when the value is NaN.
    """

    def __init__(self, cfg: PriorConfig, dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.start = nn.Parameter(torch.randn(dim) * 0.02)
        if "class" in cfg.condition:
            self.n_classes = max(1, len(cfg.class_names))
            self.cls = nn.Embedding(self.n_classes + 1, dim)
        if "sex" in cfg.condition:
            self.sex = nn.Embedding(len(SEXES) + 1, dim)
        for key in ("position", "age"):
            if key in cfg.condition:
                setattr(self, key, nn.Linear(1 + 2 * N_FREQ, dim))
                setattr(self, f"{key}_unknown", nn.Parameter(torch.randn(dim) * 0.02))

    def _drop(self, known: Tensor) -> Tensor:
        if self.training and self.cfg.cond_dropout > 0:
            keep = torch.rand(known.shape, device=known.device) >= self.cfg.cond_dropout
            return known & keep
        return known

    def _scalar(self, key: str, value: Tensor) -> Tensor:
        known = self._drop(~torch.isnan(value))
        if key == "age" and self.training and self.cfg.age_jitter > 0:
            value = value + torch.randn_like(value) * self.cfg.age_jitter
        if key == "age":
            u = ((value - self.cfg.age_mean) / self.cfg.age_std + 3) / 6
        else:
            u = value
        layer = getattr(self, key)
        u = torch.where(known, u, torch.zeros_like(u)).to(layer.weight.dtype)
        emb = layer(_fourier(u))
        return torch.where(known[:, None], emb, getattr(self, f"{key}_unknown").to(emb.dtype))

    def forward(self, cond: Cond | None, batch: int) -> Tensor:
        out = self.start.expand(batch, -1)
        cond = cond or {}
        device = self.start.device
        if "class" in self.cfg.condition:
            c = cond.get("class", torch.full((batch,), -1, dtype=torch.long, device=device)).long()
            known = self._drop((c >= 0) & (c < self.n_classes))
            out = out + self.cls(torch.where(known, c, torch.full_like(c, self.n_classes)))
        if "sex" in self.cfg.condition:
            c = cond.get("sex", torch.full((batch,), -1, dtype=torch.long, device=device)).long()
            known = self._drop((c >= 0) & (c < len(SEXES)))
            out = out + self.sex(torch.where(known, c, torch.full_like(c, len(SEXES))))
        for key in ("position", "age"):
            if key in self.cfg.condition:
                v = cond.get(key, torch.full((batch,), math.nan, device=device))
                out = out + self._scalar(key, v)
        return out


def check_guidance(cfg: PriorConfig, guidance: float) -> None:
    """Guidance needs a conditional prior that was also trained without its conditions."""
    if guidance == 1.0:
        return
    if guidance < 0:
        raise ConfigError(f"guidance {guidance}: expected at least 0 (1 = no guidance)")
    if not cfg.condition:
        raise ConfigError(
            f"prior {cfg.name!r} is unconditional: guidance needs a conditional prior "
            "(train one with --condition)"
        )
    if cfg.cond_dropout <= 0:
        raise ConfigError(
            f"prior {cfg.name!r} was trained with cond_dropout=0, so it never saw unknown "
            "conditions: guidance needs cond_dropout > 0"
        )


@dataclass(frozen=True)
class GuidedBatch:
    """The rows of one draw of ``n`` grids: ``copies`` = 1 (the prior as trained), or 2 for
    classifier-free guidance (each grid with its condition, then with it unknown)."""

    cond: Cond | None  # conditions of all copies * n rows
    copies: int
    guidance: float

    def logits(self, logits: Tensor) -> Tensor:
        """``(copies * n, K)`` -> the ``(n, K)`` logits to sample from."""
        return logits if self.copies == 1 else guide(logits, self.guidance)


def guided_batch(cfg: PriorConfig, cond: Cond | None, n: int, guidance: float) -> GuidedBatch:
    """Check ``guidance`` against the prior and lay out the batch of a draw of ``n`` grids."""
    check_guidance(cfg, guidance)
    if guidance == 1.0 or cond is None:
        return GuidedBatch(cond, 1, guidance)
    unknown = make_cond(n, device=next(iter(cond.values())).device)
    both = {k: torch.cat([v, unknown[k].to(v.dtype)]) for k, v in cond.items()}
    return GuidedBatch(both, 2, guidance)


def guide(logits: Tensor, guidance: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans, 2022): ``logits (2n, K)``, conditional rows
    first, then the same grids with unknown conditions -> ``(n, K)`` fp32 logits
    ``l_u + guidance * (l_c - l_u)``. 0 is the marginal, 1 the conditional prior, above 1
    leans further towards what sets the condition apart."""
    cond_logits, uncond_logits = logits.float().chunk(2)
    return uncond_logits + guidance * (cond_logits - uncond_logits)


CDF_BLOCK = 32  # codes per block of the two-level inverse-CDF draw


def inverse_cdf(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One code per row of ``probs (B, K)`` (non-negative, any positive sum), drawn with
    probability proportional to its entry: ``(B,)`` int64.

    Inverse CDF with one uniform per row (torch.multinomial is ~15x slower on (B, K)
    rows), in two levels when K is a multiple of ``CDF_BLOCK``: the block from the
    cumulative sums of block masses, then the code from the cumulative sum of that block
    alone, so the sequential prefix sum runs over K / 32 + 32 entries rather than K (the
    same distribution). side="right" never lands on an entry of probability 0."""
    b, k = probs.shape
    u = torch.rand(b, 1, device=probs.device, generator=generator)
    if k % CDF_BLOCK or k < 4 * CDF_BLOCK:
        cdf = probs.cumsum(-1)
        return torch.searchsorted(cdf, u * cdf[:, -1:], side="right").squeeze(1).clamp_(max=k - 1)
    blocks = probs.view(b, k // CDF_BLOCK, CDF_BLOCK)
    mass = blocks.sum(-1)  # (B, K / 32)
    cdf = mass.cumsum(-1)
    j = torch.searchsorted(cdf, u * cdf[:, -1:], side="right").clamp_(max=cdf.shape[1] - 1)
    # where u falls inside block j, as a share of its mass (kept below 1 against rounding)
    below = cdf.gather(1, j) - mass.gather(1, j)
    share = ((u * cdf[:, -1:] - below) / mass.gather(1, j)).clamp_(0.0, 1 - 2**-20)
    inner = blocks[torch.arange(b, device=probs.device), j[:, 0]].cumsum(-1)  # (B, 32)
    i = torch.searchsorted(inner, share * inner[:, -1:], side="right").clamp_(max=CDF_BLOCK - 1)
    return (j * CDF_BLOCK + i).squeeze(1)


def pick(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one code per row of ``logits (B, K)``; returns ``(B,)`` int64.

    temperature 0 takes the most likely code; ``top_k`` keeps only the k most likely.
    """
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return inverse_cdf(logits.softmax(-1), generator)


@dataclass(frozen=True)
class Draw:
    """How one code is drawn from logits: ``temperature``, ``top_k`` and the random stream
    (see ``pick``); ``choice_temperature`` orders a masked prior's cells (None: its own)."""

    temperature: float = 1.0
    top_k: int | None = None
    generator: torch.Generator | None = None
    choice_temperature: float | None = None

    @classmethod
    def of(cls, options: SamplingOptions, generator: torch.Generator | None) -> Draw:
        return cls(options.temperature, options.top_k, generator, options.choice_temperature)

    def pick(self, logits: Tensor) -> Tensor:
        """``logits (B, K)`` -> codes ``(B,)`` int64."""
        return pick(logits, self.temperature, self.top_k, self.generator)

    def pick_with_logp(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """``logits (B, K)`` -> codes ``(B,)`` int64 and their log-probabilities under
        ``logits`` themselves (temperature 1, all codes), ``(B,)`` fp32. The plain draw
        reuses its softmax for them; others pay one more pass over the logits."""
        logits = logits.float()
        if self.temperature == 1.0 and self.top_k is None:
            probs = logits.softmax(-1)
            codes = inverse_cdf(probs, self.generator)
            return codes, probs.gather(1, codes[:, None])[:, 0].log()
        codes = self.pick(logits)
        return codes, logits.gather(1, codes[:, None])[:, 0] - logits.logsumexp(-1)


class Scores(NamedTuple):
    """What a prior says about given grids (see ``Prior.scores``); each ``(B,)``."""

    nll: Tensor  # nats per grid, fp32: exact, or an upper bound (``Prior.likelihood``)
    correct: Tensor  # predicted cells whose most likely code is the true one, int64
    predicted: Tensor  # cells predicted, int64


def check_grids(cfg: PriorConfig, codes: Tensor, mask: Tensor) -> None:
    """``codes (B, *grid)`` int64 in ``[0, K)`` and ``mask`` of the same shape, or a
    ConfigError naming what is wrong."""
    want = (codes.shape[0], *cfg.grid)
    if tuple(codes.shape) != want or tuple(mask.shape) != want:
        raise ConfigError(
            f"codes {tuple(codes.shape)} and mask {tuple(mask.shape)}: expected both "
            f"(B, {', '.join(map(str, cfg.grid))}), the prior's grid"
        )
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= cfg.codebook_size):
        raise ConfigError(
            f"codes in [{int(codes.min())}, {int(codes.max())}]: expected [0, {cfg.codebook_size})"
        )


class Prior(nn.Module):
    """Base class. Subclasses implement ``forward`` and ``fill``.

    Autoregressive priors: ``forward(codes (B, h, w) int64, cond) -> logits (B, h, w, K)``
    where the logits at cell ``i`` (raster order) depend only on the codes before ``i``
    and on ``cond``; ``nll`` is exact. A masked prior (``likelihood = "upper bound"``)
    overrides ``training_loss``, ``scores`` and ``nll``.
    """

    cfg: PriorConfig
    likelihood = "exact"  # what ``scores(...).nll`` is: "exact" or "upper bound"

    def training_loss(
        self, codes: Tensor, cond: Cond | None = None, forward: nn.Module | None = None
    ) -> Tensor:
        """Mean cross-entropy in nats per predicted cell, a scalar: here every cell given
        those before it. ``forward``: the module to call in place of ``self`` (the
        DistributedDataParallel or compiled wrapper of this prior, so gradients sync)."""
        logits = (forward or self)(codes, cond)
        return F.cross_entropy(logits.flatten(0, -2).float(), codes.flatten())

    def scores(
        self, codes: Tensor, cond: Cond | None = None, generator: torch.Generator | None = None
    ) -> Scores:
        """NLL of each grid ``codes (B, *grid)`` and the top-1 accuracy of its cells; here
        exact and deterministic (``generator`` is for priors whose scores are estimates)."""
        logits = self(codes, cond).float()
        ce = F.cross_entropy(logits.flatten(0, -2), codes.flatten(), reduction="none")
        correct = (logits.argmax(-1) == codes).flatten(1).sum(1)
        return Scores(
            ce.view(codes.shape[0], -1).sum(1), correct, torch.full_like(correct, self.cfg.cells)
        )

    def nll(self, codes: Tensor, cond: Cond | None = None) -> Tensor:
        """Negative log-likelihood of each grid, in nats, ``(B,)`` fp32."""
        return self.scores(codes, cond).nll

    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: Cond | None = None,
        options: SamplingOptions = DEFAULT_OPTIONS,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``n`` code grids ``(n, *grid)`` int64 drawn with ``options`` (temperature, top_k,
        guidance, steps; see :class:`SamplingOptions`); ``cond``: per-example conditions.
        ``options.steps``: the parallel steps of a masked prior (None: its configured
        number); an autoregressive prior draws one cell per step and ignores it."""
        batch = guided_batch(self.cfg, cond, n, options.guidance)
        codes, mask = self.blank(n)
        return self.fill(codes, mask, batch, Draw.of(options, generator), options.steps)

    @torch.no_grad()
    def inpaint(
        self,
        codes: Tensor,
        mask: Tensor,
        cond: Cond | None = None,
        options: SamplingOptions = DEFAULT_OPTIONS,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Resample the cells of ``codes (B, *grid)`` int64 where ``mask (B, *grid)`` is
        True; the others are kept exactly. Returns ``(B, *grid)`` int64.

        What the new cells are conditioned on depends on the prior: a masked prior sees
        every kept cell; an autoregressive prior draws the masked cells in raster order,
        each given every cell before it (kept or already redrawn) and the condition, and
        cannot see kept cells after it. Other arguments as in ``sample``."""
        codes, mask = codes.long(), mask.bool()
        check_grids(self.cfg, codes, mask)
        batch = guided_batch(self.cfg, cond, codes.shape[0], options.guidance)
        return self.fill(codes, mask, batch, Draw.of(options, generator), options.steps)

    def blank(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` grids to draw from scratch: codes (zeros) and a mask of every cell."""
        device = next(self.parameters()).device
        codes = torch.zeros(n, *self.cfg.grid, dtype=torch.long, device=device)
        return codes, torch.ones_like(codes, dtype=torch.bool)

    def fill(
        self, codes: Tensor, mask: Tensor, batch: GuidedBatch, draw: Draw, steps: int | None
    ) -> Tensor:
        """Draw the cells of ``codes (n, *grid)`` where ``mask`` is True, keep the others;
        ``batch`` lays out the conditions of the ``n`` grids (see ``guided_batch``)."""
        raise NotImplementedError


def last_masked(mask: Tensor) -> int:
    """Index (raster order) of the last cell masked in any grid of ``mask (B, *grid)``; -1
    when none is. An autoregressive prior stops there: later cells are kept as they are."""
    flat = mask.flatten(1).any(0)
    return int(flat.nonzero().max()) if bool(flat.any()) else -1
