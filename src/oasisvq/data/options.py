"""How raw data becomes training examples: one dataclass, saved in every run's config."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from oasisvq.errors import ConfigError

#: the smallest side of a 3D output volume, in voxels
MIN_VOLUME_SIDE = 8


@dataclass(frozen=True)
class DataOptions:
    """How raw data becomes slices (``dims=2``) or whole volumes (``dims=3``). Stored in
    run configs so evaluation matches training; configs saved before ``dims`` existed
    load as 2D.

    ``voxel_mm`` and ``volume_shape`` apply to 3D only: volumes are resampled to
    ``voxel_mm`` isotropic voxels and cropped or zero-padded to ``volume_shape``
    (RAS axis order: x left->right, y posterior->anterior, z inferior->superior)."""

    size: int = 128
    fit: str = "resize"
    axis: str = "axial"
    mask: str | None = None  # folder of mask volumes, or "auto" for *_seg/*_mask siblings
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    skip_bad: bool = False
    dims: int = 2  # 2: slices, 3: whole volumes
    voxel_mm: float = 2.0
    volume_shape: tuple[int, int, int] = (96, 112, 96)

    def __post_init__(self) -> None:
        if not _is_int(self.dims) or self.dims not in (2, 3):
            raise ConfigError(f"dims={self.dims!r}: expected 2 (slices) or 3 (whole volumes)")
        voxel = self.voxel_mm
        if not isinstance(voxel, numbers.Real) or isinstance(voxel, bool):
            raise ConfigError(f"voxel_mm={voxel!r}: expected a finite number > 0")
        if not (math.isfinite(voxel) and voxel > 0):
            raise ConfigError(f"voxel_mm={voxel!r}: expected a finite number > 0")
        shape = self.volume_shape
        try:
            ok = len(shape) == 3 and all(_is_int(n) and n >= MIN_VOLUME_SIDE for n in shape)
        except TypeError:  # not a sequence
            ok = False
        if not ok:
            raise ConfigError(
                f"volume_shape={shape!r}: expected three integers >= {MIN_VOLUME_SIDE}"
            )
        # frozen: normalise in place so equal options compare and hash equal
        object.__setattr__(self, "dims", int(self.dims))
        object.__setattr__(self, "voxel_mm", float(voxel))
        object.__setattr__(self, "volume_shape", tuple(int(n) for n in shape))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataOptions:
        """The options a run saved (``config.json``'s ``data``); JSON lists become tuples."""
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for name in ("split_fractions", "volume_shape"):
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        return cls(**d)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
