"""Random changes of training volumes that keep them plausible brains, with MONAI.

A few hundred subjects are few for a 3D network: each training volume is turned by up
to ~3 degrees, scaled by up to 5%, shifted by up to 2 voxels and gets a mild gamma
change, on the device the batch is on. The draws come from torch's global generator,
which the training engine seeds and checkpoints, so a resumed run draws what the
uninterrupted run drew.
"""

from __future__ import annotations

import torch
from monai.transforms import RandAdjustContrast, RandAffine
from torch import Tensor

ROTATE = 0.05  # radians, each axis
SCALE = 0.05
SHIFT = 2.0  # voxels
GAMMA = (0.85, 1.15)
PROB = 0.8  # share of volumes changed at all


class VolumeAugment:
    """``(B, 1, X, Y, Z)`` float in [0, 1] -> the same shape, each volume changed at random."""

    def __init__(self) -> None:
        self.affine = RandAffine(
            prob=PROB,
            rotate_range=(ROTATE,) * 3,
            scale_range=(SCALE,) * 3,
            translate_range=(SHIFT,) * 3,
            mode="bilinear",
            padding_mode="zeros",
        )
        self.gamma = RandAdjustContrast(prob=PROB, gamma=GAMMA)

    def __call__(self, x: Tensor) -> Tensor:
        out = []
        for volume in x:  # MONAI transforms take one channel-first volume
            seed = int(torch.randint(2**31 - 1, (1,)))
            self.affine.set_random_state(seed)
            self.gamma.set_random_state(seed + 1)
            v = self.gamma(self.affine(volume))
            out.append(torch.as_tensor(v).clamp_(0, 1))
        return torch.stack(out)
