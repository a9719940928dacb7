"""Code grids with their conditions: what priors train on, and how images become codes."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.utils.data import Dataset

from oasisvq.data.torch_dataset import to_unit
from oasisvq.model.vqvae import VQVAE
from oasisvq.prior.base import Cond


@dataclass
class CodeSet:
    """Code grids with their conditions.

    codes: ``(N, *grid)`` int64 (``(N, h, w)`` of slices, ``(N, gx, gy, gz)`` of
    volumes); classes ``(N,)`` int64 (-1 unknown); positions and ages ``(N,)`` float32
    (NaN unknown); sexes ``(N,)`` int64 (0 female, 1 male, -1 unknown).
    """

    codes: np.ndarray
    classes: np.ndarray
    positions: np.ndarray
    ages: np.ndarray
    sexes: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.codes = np.asarray(self.codes, np.int64)
        n = len(self.codes)
        self.classes = (
            np.full(n, -1, np.int64) if self.classes is None else np.asarray(self.classes, np.int64)
        )
        self.positions = (
            np.full(n, np.nan, np.float32)
            if self.positions is None
            else np.asarray(self.positions, np.float32)
        )
        self.ages = (
            np.full(n, np.nan, np.float32)
            if self.ages is None
            else np.asarray(self.ages, np.float32)
        )
        self.sexes = (
            np.full(n, -1, np.int64) if self.sexes is None else np.asarray(self.sexes, np.int64)
        )

    @classmethod
    def from_codes(cls, codes: np.ndarray, classes: np.ndarray | None = None) -> CodeSet:
        return cls(codes, classes, None, None)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.codes)

    def __add__(self, other: CodeSet) -> CodeSet:
        """The grids and conditions of ``self`` followed by those of ``other``."""
        return CodeSet(
            *(np.concatenate([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self))
        )

    def cond(
        self, index: np.ndarray | slice = slice(None), device: torch.device | str = "cpu"
    ) -> Cond:
        return {
            "class": torch.from_numpy(self.classes[index]).to(device),
            "position": torch.from_numpy(self.positions[index]).to(device),
            "age": torch.from_numpy(self.ages[index]).to(device),
            "sex": torch.from_numpy(self.sexes[index]).to(device),
        }


class CodeDataset(Dataset):
    """Item i: ``{"codes": (*grid) int64, "class": int64, "position": float32, "age":
    float32, "sex": int64}``."""

    def __init__(self, codes: CodeSet) -> None:
        self.data = codes

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        d = self.data
        return {
            "codes": torch.from_numpy(d.codes[i]),
            "class": torch.tensor(d.classes[i]),
            "position": torch.tensor(d.positions[i]),
            "age": torch.tensor(d.ages[i]),
            "sex": torch.tensor(d.sexes[i]),
        }


@torch.no_grad()
def encode_images(
    vqvae: VQVAE, images: np.ndarray, device: torch.device, batch_size: int = 128
) -> np.ndarray:
    """``images (N, S, S)`` or volumes ``(N, X, Y, Z)`` uint8 -> codes ``(N, *grid)``
    int64, in fp32."""
    was = vqvae.training
    vqvae.eval()
    out = []
    with torch.autocast(device.type, enabled=False):
        for s in range(0, len(images), batch_size):
            x = to_unit(
                torch.from_numpy(np.array(images[s : s + batch_size], np.uint8)).unsqueeze(1),
                device,
            )
            out.append(vqvae.encode(x).cpu())
    vqvae.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0, *vqvae.cfg.grid_shape), np.int64)
