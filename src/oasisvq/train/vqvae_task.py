"""The VQ-VAE as a training task for the shared engine."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oasisvq import metrics
from oasisvq.data.augment import VolumeAugment
from oasisvq.data.slices import SliceSet
from oasisvq.data.torch_dataset import ImageDataset, to_unit
from oasisvq.data.volumes3d import VolumeSet, split_arrays
from oasisvq.errors import ConfigError
from oasisvq.model.discriminator import hinge_losses
from oasisvq.model.presets import VQVAEConfig
from oasisvq.model.vqvae import VQVAE
from oasisvq.train import distributed as D

MS_SSIM_MIN_SIZE = (metrics.MS_SSIM_WIN_SIZE - 1) * 2 ** (len(metrics.MS_SSIM_WEIGHTS) - 1)


def reconstruction_loss(recon: Tensor, x: Tensor, cfg: VQVAEConfig) -> Tensor:
    """MSE / data variance, mixed with (1 - SSIM) when ``cfg.ssim_weight`` > 0. fp32."""
    with torch.autocast(x.device.type, enabled=False):
        recon = recon.float()
        loss = F.mse_loss(recon, x) / cfg.data_variance
        if cfg.ssim_weight > 0:
            w = cfg.ssim_weight
            loss = (1 - w) * loss + w * (1 - _MEASURES[cfg.dims]["ssim"](recon, x).mean())
    return loss


# per-image (per-volume) measures by name, for inputs with 2 or 3 spatial axes
_MEASURES = {
    2: {"ssim": metrics.ssim, "ms_ssim": metrics.ms_ssim, "psnr": metrics.psnr, "mse": metrics.mse},
    3: {
        "ssim": metrics.ssim3d,
        "ms_ssim": metrics.ms_ssim3d,
        "psnr": metrics.psnr,
        "mse": metrics.mse,
    },
}
# the same inside the brain mask (volumes with masks)
MASKED = {"ssim_brain": metrics.ssim3d, "psnr_brain": metrics.psnr}


class VQVAETask:
    def __init__(
        self,
        model: VQVAE,
        train: SliceSet | VolumeSet,
        val: SliceSet | VolumeSet | None,
        batch_size: int,
    ) -> None:
        self.model = model
        self.cfg = model.cfg
        if self.cfg.adversarial_weight > 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(
                "adversarial training runs in one process: the discriminator is not part of "
                "the forward pass whose gradients DistributedDataParallel reduces"
            )
        self.train_set = ImageDataset(train)
        self.augment = VolumeAugment() if self.cfg.augment else None
        self.val = val
        self.batch_size = batch_size
        self.counts = torch.zeros(self.cfg.quantizer.codebook_size, dtype=torch.long)
        self.step = 0

    def set_step(self, step: int) -> None:
        self.step = step

    def to_device(self, batch: Tensor, device: torch.device) -> Tensor:
        x = to_unit(batch, device)
        return x if self.augment is None else self.augment(x)

    def loss(self, model: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        recon, codes, vq_loss = model(x)
        if self.cfg.loss_on_clamped:
            recon = recon.clamp(0, 1)
        rec = reconstruction_loss(recon, x, self.cfg)
        self.counts = self.counts.to(codes.device)
        self.counts += torch.bincount(codes.flatten(), minlength=len(self.counts))
        mse = F.mse_loss(recon.detach().float(), x)
        logs = {"recon": rec.detach(), "vq": vq_loss.detach(), "mse": mse}
        loss = rec + vq_loss
        if self.cfg.adversarial_weight > 0:
            # the unwrapped model's discriminator: it is not part of the forward pass; in
            # fp32 on CPU, where its 4x4 stride-2 convs run about twice as fast as in bf16
            with torch.autocast(x.device.type, enabled=x.device.type != "cpu"):
                g_loss, d_loss = hinge_losses(self.model.discriminator, recon.float(), x)
            # the decoder answers a discriminator that has learnt something, not a random one
            joined = self.step >= self.cfg.adversarial_start
            g_weight = torch.tensor(self.cfg.adversarial_weight * joined, device=x.device)
            if joined and self.cfg.adversarial_adaptive:
                g_weight = g_weight * self._balance(rec, g_loss)
            loss = loss + g_weight * g_loss + d_loss
            logs.update(gen=g_loss.detach(), disc=d_loss.detach(), gen_weight=g_weight)
        return loss, logs

    def _balance(self, rec: Tensor, g_loss: Tensor) -> Tensor:
        """``|grad rec| / |grad g_loss|`` at the decoder's last weight, detached and at most
        1e4 (Esser et al., 2021, eq. 7): times ``adversarial_weight``, the generator term's
        gradient there is that fraction of the reconstruction loss's."""
        last = self.model.decoder_output_weight()
        g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
        g_gen = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        return (g_rec.norm() / (g_gen.norm() + 1e-4)).clamp(max=1e4).detach()

    def start_epoch(self) -> None:
        self.counts = torch.zeros_like(self.counts)

    def epoch_state(self) -> list[int]:
        """The epoch's code counts so far, summed over ranks (for a step checkpoint)."""
        return D.all_reduce_sum(self.counts.clone()).tolist()

    def load_epoch_state(self, state: list[int]) -> None:
        """Continue an epoch from a step checkpoint: rank 0 carries the earlier counts."""
        if D.rank() == 0:
            self.counts = torch.tensor(state, dtype=torch.long, device=self.counts.device)

    def epoch_metrics(self) -> dict[str, float]:
        counts = D.all_reduce_sum(self.counts.clone())
        return {
            "train_codes_used": metrics.codes_used(counts),
            "train_perplexity": metrics.perplexity(counts),
        }

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        if self.val is None or len(self.val) == 0:
            return {}
        device = next(model.parameters()).device
        result = reconstruct_all(
            model, split_arrays(self.val), device, self.batch_size, measures=("ssim", "psnr", "mse")
        )
        return {
            "val_ssim": float(result["ssim"].mean()),
            "val_psnr": float(result["psnr"].mean()),
            "val_mse": float(result["mse"].mean()),
            "val_codes_used": metrics.codes_used(result["counts"]),
            "val_perplexity": metrics.perplexity(result["counts"]),
        }


@torch.no_grad()
def reconstruct_all(
    model: nn.Module,
    images: np.ndarray,
    device: torch.device,
    batch_size: int = 64,
    keep: bool = False,
    measures: tuple[str, ...] = ("ssim", "ms_ssim", "psnr", "mse"),
    masks: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Pass ``images (N, S, S)`` or volumes ``(N, X, Y, Z)`` uint8 through encoder,
    quantizer and decoder.

    Returns per-image ``measures`` (by default ``ssim``, ``ms_ssim``, ``psnr``, ``mse``,
    each ``(N,)``; in 3D their 3D definitions; ``ms_ssim`` is NaN on images too small for
    its five scales), with ``masks (N, X, Y, Z)`` bool also ``ssim_brain`` and
    ``psnr_brain`` inside them, the code-usage histogram ``counts (K,)`` and, with
    ``keep``, ``recon`` float [0, 1] shaped as the input and the code grids ``codes``.
    """
    was_training = model.training
    model.eval()
    names = (*measures, *(MASKED if masks is not None else ()))
    out: dict[str, list] = {k: [] for k in (*names, "recon", "codes")}
    counts = None
    for start in range(0, len(images), batch_size):
        x = to_unit(
            torch.from_numpy(np.array(images[start : start + batch_size])).unsqueeze(1), device
        )
        recon, codes, _ = model(x)
        recon, x = recon.float().clamp(0, 1).contiguous(), x.contiguous()
        with torch.autocast(device.type, enabled=False):
            for name in measures:
                if name == "ms_ssim" and x.dim() == 4 and x.shape[-1] <= MS_SSIM_MIN_SIZE:
                    out[name].append(torch.full((len(x),), float("nan")))  # too small for 5 scales
                    continue
                out[name].append(_MEASURES[x.dim() - 2][name](recon, x).float().cpu())
            if masks is not None:
                m = torch.from_numpy(np.array(masks[start : start + batch_size])).unsqueeze(1)
                for name, measure in MASKED.items():
                    out[name].append(measure(recon, x, mask=m.to(device)).float().cpu())
        c = torch.bincount(codes.flatten().cpu(), minlength=model.cfg.quantizer.codebook_size)
        counts = c if counts is None else counts + c
        if keep:
            out["recon"].append(recon[:, 0].cpu())
            out["codes"].append(codes.cpu())
    model.train(was_training)
    result = {k: torch.cat(v).numpy() for k, v in out.items() if v}
    result["counts"] = counts.numpy()
    return result
