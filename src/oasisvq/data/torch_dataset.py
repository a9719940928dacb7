"""torch Datasets over decoded slices and volumes."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from oasisvq.data.slices import SliceSet
from oasisvq.data.volumes3d import VolumeSet, split_arrays


class ImageDataset(Dataset):
    """Item i: ``(1, *S) uint8`` tensor of slice (or volume) i, scaled to [0, 1] on the
    device, not here."""

    def __init__(self, data: SliceSet | VolumeSet) -> None:
        self.images = split_arrays(data)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.images[i], np.uint8, copy=True)).unsqueeze(0)


def to_unit(batch: torch.Tensor, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """``(B, 1, S, S)`` or ``(B, 1, X, Y, Z)`` uint8 -> float32 in [0, 1] on ``device``;
    images (not volumes: conv3d runs no faster so on CPU) are made ``channels_last``."""
    x = batch.to(device, non_blocking=True).float().div_(255.0)
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(n, S, S)`` float in [0, 1] -> uint8 0..255 (clipped, rounded)."""
    x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
