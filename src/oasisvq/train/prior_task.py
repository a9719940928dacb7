"""A prior as a training task for the shared engine: the prior's own cross-entropy loss
(every cell given the earlier ones for an autoregressive prior, the masked cells for a
masked prior), and its scores on held-out grids."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from oasisvq.prior.base import Prior
from oasisvq.prior.data import CodeDataset, CodeSet
from oasisvq.train.engine import EpochStatsless

LN2 = math.log(2.0)


class PriorTask(EpochStatsless):
    """Batches are ``{"codes": (B, *grid), "class": (B,), "position": (B,), "age": (B,)}``; the
    loss is the prior's ``training_loss``, in nats per predicted cell; for a prior with an
    exact likelihood ``bits_per_image`` is logged beside it."""

    def __init__(self, model: Prior, train: CodeSet, val: CodeSet | None, batch_size: int) -> None:
        self.model = model
        self.train_set = CodeDataset(train)
        self.val = val
        self.batch_size = batch_size
        self.cells = model.cfg.cells

    def to_device(self, batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        # ``model`` is the wrapper the engine trains (DDP, compiled): the forward pass runs
        # through it, so gradients are synchronised
        ce = self.model.training_loss(batch["codes"], batch, forward=model)
        if self.model.likelihood != "exact":
            return ce, {}
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
    """Negative log-likelihood of every grid in bits, ``(N,)`` float64, in fp32: exact, or
    for a masked prior an estimated upper bound (``model.likelihood``; repeatable: the
    random draws come from a fixed seed).

    ``cond_override``: ``{"class": (N,), "position": (N,), "age": (N,)}`` arrays replacing the
    true conditions (e.g. wrong or unknown ones)."""
    was = model.training
    model.eval()
    out = []
    gen = torch.Generator(device).manual_seed(0)
    with torch.autocast(device.type, enabled=False):
        for s in range(0, len(codes), batch_size):
            idx = slice(s, s + batch_size)
            cond = codes.cond(idx, device)
            for k, v in (cond_override or {}).items():
                cond[k] = torch.as_tensor(np.asarray(v)[idx]).to(device)
            x = torch.from_numpy(codes.codes[idx]).to(device)
            out.append((model.scores(x, cond, gen).nll / LN2).double().cpu())
    model.train(was)
    return torch.cat(out).numpy()


@torch.no_grad()
def evaluate_nll(
    model: Prior, codes: CodeSet, device: torch.device, batch_size: int = 256
) -> dict[str, float]:
    """Mean NLL (bits per image, nats per cell; for a masked prior an estimated upper
    bound, see ``nll_per_image``) and the top-1 accuracy of the predicted codes (the next
    code; for a masked prior, the masked ones)."""
    was = model.training
    model.eval()
    total, correct, predicted = 0.0, 0, 0
    gen = torch.Generator(device).manual_seed(0)
    with torch.autocast(device.type, enabled=False):
        for s in range(0, len(codes), batch_size):
            idx = slice(s, s + batch_size)
            x = torch.from_numpy(codes.codes[idx]).to(device)
            r = model.scores(x, codes.cond(idx, device), gen)
            total += float(r.nll.sum())
            correct += int(r.correct.sum())
            predicted += int(r.predicted.sum())
    model.train(was)
    cells = model.cfg.cells
    n = max(1, len(codes)) * cells
    return {
        "nats_per_cell": total / n,
        "bits_per_image": total / n * cells / LN2,
        "accuracy": correct / max(1, predicted),
    }
