"""A feature network for Frechet distances, trained on the data itself, and the distance.

Inception features describe natural photographs, not brain MRI slices, so the
project trains its own small CNN, independently of the generator, on the training
split of the same data. It is trained to do, all at once:

* **rotation**: which of 0, 90, 180 or 270 degrees was applied to the slice
  (self-supervised; every data set has it). Telling the orientation of a brain slice
  requires its anatomy: skull outline, ventricles, hemispheres;
* **class**: the class folder of the slice (e.g. the dementia group), when the data
  has classes;
* **position**: the normalised slice position in the volume, when the data gives it.

The features are the 128 channels after global average pooling. The network is
trained with the shared engine once per data root and cached in
``RUN/features/<key>/`` (``key`` names the data root and options); a lock file beside
it makes concurrent evaluations of one run wait for a single training instead of
racing on its checkpoints, so all of them measure with the same network. Its class and
position heads also classify generated samples (class balance of conditional priors).

Images are resized to 64x64 (area) before the network: the measure is about anatomy,
not pixel noise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from oasisvq.data.slices import SliceSet
from oasisvq.io import exclusive  # the lock the data cache uses too
from oasisvq.runs import checkpoint
from oasisvq.runs.rundir import FEATURES_DIRS
from oasisvq.train.config import TrainConfig
from oasisvq.train.engine import EpochStatsless, train_task

INPUT_SIZE = 64
FEATURE_DIM = 128


class FeatureNet(nn.Module):
    """``(B, 1, S, S)`` in [0, 1] -> features ``(B, 128)``; heads for rotation, class, position."""

    def __init__(self, n_classes: int = 0, with_position: bool = False) -> None:
        super().__init__()
        self.n_classes, self.with_position = n_classes, with_position

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(
            *block(1, 32, 2),  # 32x32
            *block(32, 64, 2),  # 16x16
            *block(64, 128, 2),  # 8x8
            *block(128, FEATURE_DIM, 2),  # 4x4
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.rotation = nn.Linear(FEATURE_DIM, 4)
        self.cls = nn.Linear(FEATURE_DIM, n_classes) if n_classes > 1 else None
        self.position = nn.Linear(FEATURE_DIM, 1) if with_position else None

    def features(self, x: Tensor) -> Tensor:
        if x.shape[-1] != INPUT_SIZE or x.shape[-2] != INPUT_SIZE:
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="area")
        return self.body(x - 0.5)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        f = self.features(x)
        out = {"rotation": self.rotation(f)}
        if self.cls is not None:
            out["class"] = self.cls(f)
        if self.position is not None:
            out["position"] = self.position(f)[:, 0]
        return out


class LabelledImages(Dataset):
    """Item i: ``{"image": (1, S, S) uint8, "class": int64, "position": float32}``."""

    def __init__(self, slices: SliceSet) -> None:
        self.s = slices

    def __len__(self) -> int:
        return len(self.s)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {
            "image": torch.from_numpy(np.array(self.s.images[i], np.uint8, copy=True))[None],
            "class": torch.tensor(int(self.s.classes[i])),
            "position": torch.tensor(float(self.s.positions[i])),
        }


def rotate_batch(x: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate each image of ``(B, 1, S, S)`` by a random multiple of 90 degrees; returns the
    images and the rotation index ``(B,)``."""
    k = torch.randint(0, 4, (x.shape[0],), device=x.device)
    out = x.clone()
    for r in range(1, 4):
        sel = k == r
        if sel.any():
            out[sel] = torch.rot90(x[sel], r, dims=(2, 3))
    return out, k


class FeatureTask(EpochStatsless):
    """Rotation + class + position prediction, for the shared engine."""

    def __init__(
        self, model: FeatureNet, train: SliceSet, val: SliceSet | None, batch_size: int
    ) -> None:
        self.model = model
        self.train_set = LabelledImages(train)
        self.val = val
        self.batch_size = batch_size

    def to_device(self, batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
        out = {k: v.to(device) for k, v in batch.items()}
        out["image"] = out["image"].float() / 255.0
        return out

    def _losses(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x, rot = rotate_batch(batch["image"])
        out = model(x)
        losses = {"rotation": F.cross_entropy(out["rotation"].float(), rot)}
        losses["rotation_acc"] = (out["rotation"].argmax(-1) == rot).float().mean()
        if "class" in out:
            c = batch["class"]
            known = c >= 0
            if known.any():
                losses["class"] = F.cross_entropy(out["class"].float()[known], c[known])
                losses["class_acc"] = (out["class"][known].argmax(-1) == c[known]).float().mean()
        if "position" in out:
            p = batch["position"]
            known = torch.isfinite(p)
            if known.any():
                losses["position"] = F.mse_loss(out["position"].float()[known], p[known])
        return losses

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        losses = self._losses(model, batch)
        total = sum(v for k, v in losses.items() if not k.endswith("_acc"))
        return total, {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        if self.val is None or len(self.val) == 0:
            return {}
        device = next(model.parameters()).device
        gen = torch.get_rng_state()
        torch.manual_seed(0)  # the same rotations every epoch
        sums: dict[str, float] = {}
        batches = 0
        for s in range(0, len(self.val), 256):
            idx = np.arange(s, min(len(self.val), s + 256))
            batch = self.to_device(_collate(self.val, idx), device)
            for k, v in self._losses(model, batch).items():
                sums[k] = sums.get(k, 0.0) + float(v)
            batches += 1
        torch.set_rng_state(gen)
        names = {
            "rotation": "val_rotation_loss",
            "class": "val_class_loss",
            "position": "val_position_loss",
        }
        return {names.get(k, f"val_{k}"): v / batches for k, v in sums.items()}


def _collate(s: SliceSet, idx: np.ndarray) -> dict[str, Tensor]:
    return {
        "image": torch.from_numpy(np.asarray(s.images[idx]))[:, None],
        "class": torch.from_numpy(s.classes[idx]),
        "position": torch.from_numpy(s.positions[idx]),
    }


def feature_key(data_root: str | None, data_options: dict) -> str:
    return hashlib.sha1(
        json.dumps([str(data_root), data_options], sort_keys=True, default=str).encode()
    ).hexdigest()[:12]


def feature_net(
    run_dir: str | Path,
    data_root: str | None,
    data_options: dict,
    train: SliceSet,
    val: SliceSet | None,
    epochs: int = 6,
    device: str = "auto",
    batch_size: int = 64,
) -> FeatureNet:
    """The feature network of ``data_root``: loaded from ``RUN/features/<key>/`` or trained
    there first (with the shared engine), in eval mode on the CPU."""

    out = Path(run_dir) / FEATURES_DIRS[2] / feature_key(data_root, data_options)
    with exclusive(out.with_name(out.name + ".lock")):
        n_classes = len(train.class_names) if (train.classes >= 0).any() else 0
        with_position = bool(np.isfinite(train.positions).any())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # initial weights that do not depend on what ran before
            model = FeatureNet(n_classes, with_position)
        ckpt = checkpoint.latest(out)
        if ckpt is not None:
            if checkpoint.read_config(out).get("train", {}).get("epochs") != epochs:
                shutil.rmtree(out)  # trained for another number of epochs: start again
            elif checkpoint.load_state(ckpt).get("epoch") == epochs:
                checkpoint.load_weights(ckpt, model)
                return model.eval()
        cfg = TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=2e-3,
            weight_decay=1e-4,
            device=device,
            channels_last=False,
        )
        config = {
            "kind": "features",
            "task": "rotation (4-way)"
            + (" + class" if n_classes > 1 else "")
            + (" + position" if with_position else ""),
            "n_classes": n_classes,
            "with_position": with_position,
            "train": dataclasses.asdict(cfg),
            "data_root": None if data_root is None else str(data_root),
            "data": data_options,
        }
        # an interrupted training continues
        train_task(lambda: FeatureTask(model, train, val, cfg.batch_size), cfg, out, config, "auto")
        return model.cpu().eval()


@torch.no_grad()
def extract(
    model: FeatureNet, images: np.ndarray | Tensor, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Features and head outputs of images ``(N, S, S)`` (uint8, or float in [0, 1]).

    Returns ``features (N, 128)`` float64, ``cls_prob (N, C)`` when the net has a class
    head, ``pos (N,)`` when it has a position head."""
    device = next(model.parameters()).device
    out: dict[str, list] = {"features": [], "class_prob": [], "position": []}
    for s in range(0, len(images), batch_size):
        chunk = images[s : s + batch_size]
        x = chunk if isinstance(chunk, Tensor) else torch.from_numpy(np.array(chunk))
        x = (x.float() / 255.0 if x.dtype == torch.uint8 else x.float())[:, None].to(device)
        f = model.features(x)
        out["features"].append(f.double().cpu())
        if model.cls is not None:
            out["class_prob"].append(model.cls(f).softmax(-1).cpu())
        if model.position is not None:
            out["position"].append(model.position(f)[:, 0].cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items() if v}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a (n, d)``, ``b (m, d)``:

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))``.

    The trace of the matrix square root is computed as the sum of the square roots
    of the eigenvalues of the symmetric PSD matrix ``S_a^(1/2) S_b S_a^(1/2)``, which
    has the same eigenvalues as ``S_a S_b`` (equal to ``scipy.linalg.sqrtm``'s trace, but
    without complex round-off), in float64.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feature sets of shapes {a.shape} and {b.shape}: expected (n, d) and (m, d)"
        )
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least two feature vectors per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ s_b @ root_a
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_root = float(np.sqrt(np.clip(ev, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_root)
