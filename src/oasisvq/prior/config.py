"""Prior configurations as dataclasses and the named priors.

A prior models the distribution of a VQ-VAE's code grid, ``p(codes | condition)``:
autoregressively in raster order (``pixelcnn``, ``transformer``), or as a masked model
that predicts any cells from the others and samples in a few parallel steps
(``maskgit``). The whole :class:`PriorConfig` (including what the
data fixed at training time: grid, codebook size, class names, age statistics) is
saved inside every checkpoint, so a prior can be rebuilt without this table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from oasisvq.errors import ConfigError

CONDITIONS = ("class", "position", "age", "sex")
SEXES = ("F", "M")  # the "sex" condition's values 0 and 1
COND_AT = ("start", "every")


def _check_type(name: str, value: object, default: object) -> None:
    """A field whose default is a bool, int or float holds one (an int where a float is
    expected; a float that is finite), else a one-line ConfigError."""
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok, want = ok and math.isfinite(value), "a finite number"  # type: ignore[arg-type]
    else:
        return
    if not ok:
        raise ConfigError(f"prior option {name}={value!r}: expected {want}")


@dataclass
class PriorConfig:
    name: str
    arch: str  # "pixelcnn", "transformer" or "maskgit"
    description: str = ""
    # --- pixelcnn (the report's layers)
    filters: int = 128  # masked type A 7x7 conv and the type B 1x1 layers
    first_kernel: int = 7
    residual_blocks: int = (
        4  # 1x1 conv -> masked type B 3x3 conv (filters // 2) -> 1x1 conv, + skip
    )
    head_layers: int = 4  # masked type B 1x1 conv layers after the residual blocks
    # --- transformer (GPT-style decoder over the raster-flattened grid)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 1  # 1 = multi-query attention: a small KV cache makes 32x32 sampling cheap
    # --- maskgit (bidirectional transformer with the layers above, plain multi-head
    # attention: n_kv_heads is not used)
    steps: int = 8  # parallel decoding steps when sampling (a sampling option may override)
    choice_temperature: float = 4.5  # Gumbel noise on the confidence of early steps (paper: 4.5)
    patch: int = 0  # cells per token along each axis (p**ndim cells a token); 0 = automatic
    mlp_ratio: int = 4
    dropout: float = 0.1  # on embeddings and residual branches; none on attention weights
    # --- data: also train on the codes of the left-right mirrored training images
    mirror: bool = False
    # --- conditioning: any of "class", "position", "age", "sex"; () is unconditional
    condition: tuple[str, ...] = ()
    cond_dropout: float = (
        0.1  # training: share of examples whose condition is replaced by "unknown"
    )
    # training: std in years of Gaussian noise added to each known age, so that nearby
    # ages teach the same thing; without it a rare age names one training subject
    age_jitter: float = 0.0
    # transformer and maskgit: "start" = the condition is the first token only; "every" =
    # also added to every token's input, so each prediction sees it directly rather than
    # through attention (the pixelcnn adds it in every layer anyway)
    cond_at: str = "start"
    # --- training defaults (TrainConfig fields)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    # --- fixed by the data and the VQ-VAE when training starts
    codebook_size: int = 0
    grid: tuple[int, ...] = (0, 0)  # (h, w), or (gx, gy, gz) for a grid of a volume
    class_names: tuple[str, ...] = ()
    age_mean: float = 0.0
    age_std: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):  # an --option or a saved config may hold any JSON value
            _check_type(f.name, getattr(self, f.name), f.default)
        if self.cond_at not in COND_AT:
            raise ConfigError(f"cond_at={self.cond_at!r}: choose from {', '.join(COND_AT)}")
        if self.age_jitter < 0:
            raise ConfigError(f"age_jitter={self.age_jitter}: expected a number of years >= 0")

    @property
    def cells(self) -> int:
        return math.prod(self.grid)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PriorConfig:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for key in ("condition", "grid", "class_names"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


# the report's PixelCNN, trained as the report trained it
PIXELCNN_SEED = PriorConfig(
    name="pixelcnn-seed",
    arch="pixelcnn",
    description="The report's PixelCNN (its table): one-hot input, masked 7x7 type A conv (128), "
    "4 residual blocks (1x1, masked 3x3 type B with 64, 1x1), 4 masked 1x1 type B layers (128).",
    residual_blocks=4,
    head_layers=4,
    epochs=30,
    batch_size=128,
    lr=3e-4,
    weight_decay=0.0,
)

TRANSFORMER = PriorConfig(
    name="transformer",
    arch="transformer",
    description="GPT-style decoder over the raster-flattened grid: no blind spot, a position "
    "embedding per grid axis (2D slices, 3D volumes), conditions as the start token and "
    "added to every cell's input (cond_at=every), multi-query attention with a KV cache for "
    "sampling; mirror=true also trains on left-right mirrored slices.",
    d_model=128,
    n_layers=4,
    n_heads=4,
    n_kv_heads=1,
    cond_at="every",
    dropout=0.1,
    epochs=60,
    batch_size=64,
    lr=1e-3,
    weight_decay=0.05,
)

PRIORS: dict[str, PriorConfig] = {
    cfg.name: cfg
    for cfg in [
        PIXELCNN_SEED,
        replace(
            PIXELCNN_SEED,
            name="pixelcnn-seed-code",
            description="The report's PixelCNN as its code had it: 2 residual blocks and 2 masked 1x1 layers.",
            residual_blocks=2,
            head_layers=2,
        ),
        TRANSFORMER,
        replace(
            TRANSFORMER,
            name="maskgit",
            arch="maskgit",
            cond_at="start",  # at most 64 tokens, each attending to the condition token
            description="MaskGIT: bidirectional transformer trained to predict masked cells "
            "(cosine masking schedule), sampled in `steps` parallel steps (default 8) by "
            "confidence; inpaints any cells given the others; the transformer's layers, "
            "conditions and guidance; 2D and 3D grids, a patch of cells per token (patch=0: at "
            "most 64 tokens). No exact likelihood: evaluation reports an upper bound.",
        ),
    ]
}


def get_prior_config(name: str, **overrides: object) -> PriorConfig:
    """A copy of named prior ``name`` with ``overrides`` (PriorConfig fields; None is ignored)."""
    if name not in PRIORS:
        raise ConfigError(f"unknown prior {name!r}; known priors: {', '.join(PRIORS)}")
    known = {f.name for f in fields(PriorConfig)}
    bad = sorted(k for k in overrides if k not in known)
    if bad:
        raise ConfigError(
            f"unknown prior option(s) {', '.join(bad)}; known: {', '.join(sorted(known))}"
        )
    set_ = {k: v for k, v in overrides.items() if v is not None}
    if "condition" in set_:
        set_["condition"] = parse_condition(set_["condition"])
    return replace(PRIORS[name], **set_)


def parse_condition(value: object) -> tuple[str, ...]:
    """``"class,position"`` / ``["class"]`` / ``"none"`` -> a validated tuple of conditions."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[arg-type]
    out = tuple(dict.fromkeys(s.strip() for s in items if s.strip() and s.strip() != "none"))
    bad = [c for c in out if c not in CONDITIONS]
    if bad:
        raise ConfigError(
            f"unknown condition(s) {', '.join(bad)}; choose from {', '.join(CONDITIONS)}"
        )
    return out


__all__ = ["SEXES", "CONDITIONS", "PRIORS", "PriorConfig", "get_prior_config", "parse_condition"]
