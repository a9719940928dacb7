"""A prior as a training task for the shared engine: cross-entropy over the code grid."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oasisvq.prior.base import Prior
from oasisvq.prior.data import CodeDataset, CodeSet
from oasisvq.train.engine import EpochStatsless

LN2 = math.log(2.0)


class PriorTask(EpochStatsless):
    """Batches are ``{"codes": (B, h, w), "class": (B,), "position": (B,), "age": (B,)}``; the
    loss is the mean cross-entropy per cell in nats; ``bits_per_image`` is logged beside it."""

    def __init__(self, model: Prior, train: CodeSet, val: CodeSet | None, batch_size: int) -> None:
        self.model = model
        self.train_set = CodeDataset(train)
        self.val = val
        self.batch_size = batch_size
        self.cells = model.cfg.cells

    def to_device(self, batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        codes = batch["codes"]
        logits = model(codes, batch)
        ce = F.cross_entropy(logits.flatten(0, 2).float(), codes.flatten())
        return ce, {"bits_per_image": ce.detach() * self.cells / LN2}

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        if self.val is None or len(self.val) == 0:
            return {}
        device = next(model.parameters()).device
        r = evaluate_nll(model, self.val, device, max(self.batch_size, 256))
        return {
            "val_loss": r["nats_per_cell"],
            "val_loss_bits_per_image": r["bits_per_image"],
            "val_accuracy": r["accuracy"],
        }


@torch.no_grad()
def nll_per_image(
    model: Prior,
    codes: CodeSet,
    device: torch.device,
    batch_size: int = 256,
    cond_override: dict | None = None,
) -> np.ndarray:
    """Negative log-likelihood of every grid in bits, ``(N,)`` float64, in fp32.

    ``cond_override``: ``{"class": (N,), "position": (N,), "age": (N,)}`` arrays replacing the
    true conditions (e.g. wrong or unknown ones)."""
    was = model.training
    model.eval()
    out = []
    with torch.autocast(device.type, enabled=False):
        for s in range(0, len(codes), batch_size):
            idx = slice(s, s + batch_size)
            cond = codes.cond(idx, device)
            for k, v in (cond_override or {}).items():
                cond[k] = torch.as_tensor(np.asarray(v)[idx]).to(device)
            x = torch.from_numpy(codes.codes[idx]).to(device)
            out.append((model.nll(x, cond) / LN2).double().cpu())
    model.train(was)
    return torch.cat(out).numpy()


@torch.no_grad()
def evaluate_nll(
    model: Prior, codes: CodeSet, device: torch.device, batch_size: int = 256
) -> dict[str, float]:
    """Mean NLL (bits per image, nats per cell) and top-1 accuracy of the next code."""
    was = model.training
    model.eval()
    total, correct, n = 0.0, 0, 0
    with torch.autocast(device.type, enabled=False):
        for s in range(0, len(codes), batch_size):
            idx = slice(s, s + batch_size)
            x = torch.from_numpy(codes.codes[idx]).to(device)
            logits = model(x, codes.cond(idx, device)).float()
            total += float(F.cross_entropy(logits.flatten(0, 2), x.flatten(), reduction="sum"))
            correct += int((logits.argmax(-1) == x).sum())
            n += x.numel()
    model.train(was)
    cells = model.cfg.cells
    return {
        "nats_per_cell": total / n,
        "bits_per_image": total / n * cells / LN2,
        "accuracy": correct / n,
    }
