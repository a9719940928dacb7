"""VQ-VAE configurations as dataclasses, and the named presets.

A preset is a complete ``VQVAEConfig``; the whole config is saved inside every
checkpoint, so a run can always be rebuilt without this table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from oasisvq.errors import ConfigError
from oasisvq.model.quantizer import QuantizerConfig

ARCHS = ("seed", "resnet")
DIMS = (2, 3)
# configs saved before these fields existed meant these values
SAVED_BEFORE_THESE_FIELDS = {"upsample": "nearest", "full_res": True}


@dataclass
class VQVAEConfig:
    name: str
    arch: str  # "seed" (the report's Keras layers) or "resnet"
    description: str = ""
    dims: int = (
        2  # 2: square slices of ``image_size``; 3: volumes of ``volume_shape`` (resnet only)
    )
    image_size: int = 128
    volume_shape: tuple[int, ...] = ()  # 3D: (X, Y, Z) voxels in RAS order
    voxel_mm: float = 0.0  # 3D: isotropic voxel size the volumes are resampled to
    widths: tuple[int, ...] = (32, 32, 64, 64)  # channels after each stride-2 level
    blocks: tuple[int, ...] = (0, 0, 0, 0)  # residual blocks per level (resnet only)
    mid_blocks: int = 0  # residual blocks at the latent resolution (resnet only)
    decoder_blocks: tuple[int, ...] | None = None  # per level, encoder order; None = ``blocks``
    decoder_mid_blocks: int | None = None  # None = ``mid_blocks``
    upsample: str = "convt"  # decoder x2 upsampling: "convt" 4x4, or "nearest" + conv 3x3
    full_res: bool = False  # layers at the image's resolution; False: sub-pixel output head
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    ssim_weight: float = 0.0  # loss: (1 - w) * MSE/var + w * (1 - SSIM)
    data_variance: float = 0.104  # MSE is divided by it (corrected value for these images)
    default_epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    adam_beta2: float = 0.999  # AdamW's second-moment decay
    # adversarial term (0 = none): weight of a patch discriminator's generator loss beside
    # the reconstruction loss (model/discriminator.py); the discriminator is then part of
    # the model and of its checkpoints
    adversarial_weight: float = 0.0
    adversarial_start: int = (
        0  # optimizer steps the discriminator trains alone before the term joins
    )
    discriminator_width: int = 16  # channels of its first level (x2 per level)
    # scale the term so that its gradient at the decoder's last layer is
    # adversarial_weight times the reconstruction loss's (VQGAN's adaptive weight), so the
    # weight means the same whatever the scale of the discriminator's output
    adversarial_adaptive: bool = False
    augment: bool = False  # training volumes changed at random (data/augment.py; 3D only)
    # the loss sees the output clamped to [0, 1], as evaluation and sampling do: outputs
    # below 0 cost nothing, so a masked (all-zero) background comes out exactly 0 instead
    # of as faint noise, which SSIM over a volume that is ~80% background punishes hard
    loss_on_clamped: bool = False

    def __post_init__(self) -> None:
        self.volume_shape = tuple(int(v) for v in self.volume_shape)
        if self.dims not in DIMS:
            raise ConfigError(f"model dims {self.dims}: expected 2 or 3")
        if self.dims == 3:
            if self.arch != "resnet":
                raise ConfigError(f"arch {self.arch!r} is 2D only; 3D models are 'resnet'")
            step = 2 ** len(self.widths)
            if len(self.volume_shape) != 3 or any(v % step for v in self.volume_shape):
                raise ConfigError(
                    f"volume shape {self.volume_shape}: expected three sizes, each a multiple "
                    f"of {step} (the encoder halves it {len(self.widths)} times)"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Spatial shape of one input: ``(S, S)`` or ``(X, Y, Z)``."""
        return self.volume_shape if self.dims == 3 else (self.image_size, self.image_size)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """Spatial shape of one code grid: ``(h, w)`` or ``(gx, gy, gz)``."""
        return tuple(s // 2 ** len(self.widths) for s in self.input_shape)

    @property
    def grid(self) -> int:
        """Side of a 2D model's square code grid (see ``grid_shape`` for any dims)."""
        if self.dims != 2:
            raise ConfigError(f"preset {self.name!r} is 3D: its grid is grid_shape")
        return self.image_size // 2 ** len(self.widths)

    @property
    def bits_per_image(self) -> float:
        """Bits of one code grid: per slice in 2D, per volume in 3D."""
        return math.prod(self.grid_shape) * math.log2(self.quantizer.codebook_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VQVAEConfig:
        """A saved config; keys of earlier versions that no longer mean anything are ignored."""
        known = {f.name for f in fields(cls)}
        d = {**SAVED_BEFORE_THESE_FIELDS, **{k: v for k, v in d.items() if k in known}}
        if d.get("arch") not in ARCHS:
            raise ConfigError(f"model arch {d.get('arch')!r}: expected one of {', '.join(ARCHS)}")
        q_known = {f.name for f in fields(QuantizerConfig)}
        d["quantizer"] = QuantizerConfig(
            **{k: v for k, v in d["quantizer"].items() if k in q_known}
        )
        for key in ("widths", "blocks", "decoder_blocks", "volume_shape"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


# the high-fidelity preset, defined first because `mid` is built from it
HIFI = VQVAEConfig(
    name="hifi",
    arch="resnet",
    description=(
        "High fidelity: 32x32 grid, 512 codes (1152 bytes per image); "
        "light encoder, heavier decoder, sub-pixel output."
    ),
    widths=(32, 48),
    blocks=(0, 1),
    mid_blocks=0,
    decoder_blocks=(1, 3),
    decoder_mid_blocks=1,
    upsample="convt",
    full_res=False,
    quantizer=QuantizerConfig(codebook_size=512, dim=32),
    ssim_weight=0.9,
    loss_on_clamped=True,
    lr=2e-3,
    adam_beta2=0.99,
    batch_size=32,
    default_epochs=34,  # within 45 CPU-minutes on an AVX-512 core: results/quality-hifi.json
)

COMPACT = VQVAEConfig(
    name="compact",
    arch="resnet",
    description=(
        "Residual VQ-VAE at the seed's budget: 8x8 grid, 16 codes (256 bits); "
        "light encoder, heavier decoder, transposed-conv upsampling."
    ),
    widths=(16, 32, 64, 128),
    blocks=(0, 0, 1, 1),
    mid_blocks=0,
    decoder_blocks=(0, 1, 2, 1),
    decoder_mid_blocks=1,
    upsample="convt",
    full_res=False,
    quantizer=QuantizerConfig(codebook_size=16, dim=16, normalize=True),
    ssim_weight=0.9,
    lr=2e-3,
    adam_beta2=0.99,
    batch_size=32,
    default_epochs=48,  # within 30 CPU-minutes on an AVX-512 core: results/quality-compact.json
)


def fsq_variant(cfg: VQVAEConfig, levels: tuple[int, ...]) -> VQVAEConfig:
    """Preset ``cfg`` with finite scalar quantization over ``levels`` in place of its
    codebook, at the same bits per image (``prod(levels)`` equals its codebook size): the
    encoder writes ``len(levels)`` channels, which are rounded, and the decoder reads them."""
    q = QuantizerConfig(kind="fsq", levels=levels, dim=len(levels))
    if q.codebook_size != cfg.quantizer.codebook_size:
        raise ConfigError(
            f"fsq levels {levels}: {q.codebook_size} codes, expected {cfg.quantizer.codebook_size}"
        )
    return replace(
        cfg,
        name=f"{cfg.name}-fsq",
        description=f"{cfg.name} with finite scalar quantization instead of its codebook: "
        f"levels {levels}, {cfg.bits_per_image:.0f} bits per image as {cfg.name}; nothing "
        "learnt in the quantizer, no code can die.",
        quantizer=q,
    )


# whole volumes at 2 mm, cropped around the brain (RAS order: x left-right, y back-front,
# z bottom-top); the shape holds every brain of the IXI and OASIS-1 data with a margin
VOLUME_SHAPE = (96, 112, 96)

COMPACT3D = VQVAEConfig(
    name="compact3d",
    arch="resnet",
    description=(
        "Whole brains for generation: 96x112x96 voxels at 2 mm -> 12x14x12 grid, 256 codes "
        "(2016 cells, 2016 bytes per volume): a grid a 3D prior can model on a CPU."
    ),
    dims=3,
    volume_shape=VOLUME_SHAPE,
    voxel_mm=2.0,
    widths=(16, 32, 64),
    blocks=(0, 1, 1),
    mid_blocks=0,
    decoder_blocks=(1, 1, 2),
    decoder_mid_blocks=1,
    upsample="convt",
    full_res=False,
    quantizer=QuantizerConfig(codebook_size=256, dim=32),
    ssim_weight=0.9,
    lr=2e-3,
    adam_beta2=0.99,
    batch_size=4,
    default_epochs=40,
    augment=True,
    loss_on_clamped=True,
)

HIFI3D = replace(
    COMPACT3D,
    name="hifi3d",
    description=(
        "Whole brains for fidelity: 96x112x96 voxels at 2 mm -> 24x28x24 grid, 512 codes "
        "(16128 cells, 18144 bytes per volume)."
    ),
    widths=(24, 48),
    blocks=(0, 1),
    decoder_blocks=(1, 2),
    quantizer=QuantizerConfig(codebook_size=512, dim=32),
)

MID = replace(
    HIFI,
    name="mid",
    description=(
        "Between the two: 16x16 grid, 256 codes (256 bytes per image); "
        "the hifi recipe with a third level."
    ),
    widths=(32, 48, 64),
    blocks=(0, 1, 1),
    decoder_blocks=(1, 2, 2),
    quantizer=QuantizerConfig(codebook_size=256, dim=32),
    default_epochs=20,
)

PRESETS: dict[str, VQVAEConfig] = {
    cfg.name: cfg
    for cfg in [
        VQVAEConfig(
            name="seed",
            arch="seed",
            description="The original report's table: 4 stride-2 convs, 8x8x16 latent, 16 codes.",
            quantizer=QuantizerConfig(codebook_size=16, dim=16),
            lr=2e-3,
            batch_size=32,
        ),
        COMPACT,
        MID,
        HIFI,
        # the paper recommends few channels of at least 5 levels each; 16 codes allow no such
        # product beyond one channel, so (4, 4): the most levels per channel in more than one
        fsq_variant(COMPACT, (4, 4)),
        # (8, 8, 4): 256 codes exactly, the paper's few wide channels ((8, 6, 5) is 240);
        # trained twice mid's epochs, as in results/quality-mid-fsq.json
        replace(fsq_variant(MID, (8, 8, 4)), default_epochs=40),
        # (8, 8, 8): the paper's pattern for 2^9 codes (its table: (8, 6, 5) for 2^8,
        # (8, 5, 5, 5) for 2^10), exactly 512 codes
        fsq_variant(HIFI, (8, 8, 8)),
        COMPACT3D,
        HIFI3D,
    ]
}


def get_preset(name: str, **overrides: object) -> VQVAEConfig:
    """A copy of preset ``name``. QuantizerConfig fields (``codebook_size=...``,
    ``kind="fsq", levels=(8, 8, 8)``) override the quantizer; None is ignored."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    size = overrides.get("codebook_size")
    if size is not None and not 2 <= int(size) <= 65536:  # type: ignore[call-overload]
        raise ConfigError(f"--codebook-size {size}: expected a whole number in [2, 65536]")
    q_keys = {
        k: v
        for k, v in overrides.items()
        if k in QuantizerConfig.__dataclass_fields__ and v is not None
    }
    rest = {k: v for k, v in overrides.items() if k not in q_keys and v is not None}
    if q_keys.get("kind") == "vq":
        q_keys.setdefault("levels", ())  # an fsq preset switched back to a codebook
    quantizer = replace(cfg.quantizer, **q_keys)
    size = q_keys.get("codebook_size")
    if quantizer.kind == "fsq" and size is not None and size != quantizer.codebook_size:
        raise ConfigError(
            f"codebook size {size}: an fsq quantizer has prod(levels) = {quantizer.codebook_size} "
            f"codes (levels {quantizer.levels}); set levels instead"
        )
    return replace(cfg, quantizer=quantizer, **rest)
