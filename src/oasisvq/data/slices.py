"""The in-memory form of one split: decoded uint8 slices plus per-slice labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SliceSet:
    """One split of 2D slices, decoded once.

    images:    ``(N, S, S) uint8`` (may be a read-only memory map)
    subjects:  subject id per slice (splits never share a subject when ids are known)
    classes:   class index per slice into ``class_names``, or -1 when unlabelled
    positions: normalised slice position in the volume, ``[0, 1]``, NaN if unknown
    ages:      age in years, NaN if unknown
    sources:   file each slice came from (``file#k`` for slice k of a volume)
    """

    images: np.ndarray
    subjects: list[str]
    sources: list[str]
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    ages: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    class_names: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.images)
        if len(self.classes) == 0:
            self.classes = np.full(n, -1, np.int64)
        if len(self.positions) == 0:
            self.positions = np.full(n, np.nan, np.float32)
        if len(self.ages) == 0:
            self.ages = np.full(n, np.nan, np.float32)
        for name in ("subjects", "sources", "classes", "positions", "ages"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"SliceSet.{name} has {len(getattr(self, name))} entries for {n} images"
                )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, index: np.ndarray) -> SliceSet:
        index = np.asarray(index, np.int64)
        return SliceSet(
            images=np.asarray(self.images[index]),
            subjects=[self.subjects[i] for i in index],
            sources=[self.sources[i] for i in index],
            classes=self.classes[index],
            positions=self.positions[index],
            ages=self.ages[index],
            class_names=list(self.class_names),
        )


Splits = dict[str, SliceSet]
SPLIT_NAMES = ("train", "validate", "test")
