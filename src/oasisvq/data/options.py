"""How raw data becomes slices: one dataclass, saved in every run's config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class DataOptions:
    """How raw data becomes slices. Stored in run configs so evaluation matches training."""

    size: int = 128
    fit: str = "resize"
    axis: str = "axial"
    mask: str | None = None  # folder of mask volumes, or "auto" for *_seg/*_mask siblings
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    skip_bad: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataOptions:
        """The options a run saved (``config.json``'s ``data``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "split_fractions" in d:
            d["split_fractions"] = tuple(d["split_fractions"])
        return cls(**d)
