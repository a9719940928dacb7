"""``monai.networks.nets.VQVAE`` with our model's interface, shaped to a preset's latent.

One stride-2 level (MONAI's default 4x4 or 4x4x4 kernel, padding 1) per entry of the
preset's ``widths`` gives the preset's code grid: ``spatial_dims`` is the preset's
``dims``, so slices of ``image_size`` and volumes of ``volume_shape`` both map to
``grid_shape``. See ``benchmarks/monai_peer.py`` for the two shapes of the rest.
"""

from __future__ import annotations

import dataclasses

import torch
from monai.networks.nets import VQVAE as MonaiNet
from torch import Tensor, nn

from oasisvq.model.presets import VQVAEConfig
from oasisvq.model.vqvae import VQOutput

MONAI_DEFAULT_WIDTHS = (96, 96, 192)  # monai.networks.nets.VQVAE's default channels
MONAI_DEFAULT_RES_LAYERS = 3  # and its default num_res_layers
SHAPES = ("default", "matched")


def monai_widths(cfg: VQVAEConfig, shape: str) -> tuple[tuple[int, ...], int]:
    """``(channels, num_res_layers)`` of MONAI's network for preset ``cfg``: MONAI's
    defaults cut to (or extended with their last width to) the preset's number of levels
    (``default``), or the preset's own widths and the most residual blocks any of its
    encoder levels has (``matched``)."""
    levels = len(cfg.widths)
    if shape == "default":
        widths = MONAI_DEFAULT_WIDTHS[:levels]
        return widths + (widths[-1],) * (levels - len(widths)), MONAI_DEFAULT_RES_LAYERS
    if shape == "matched":
        return tuple(cfg.widths), max(cfg.blocks)
    raise ValueError(f"monai shape {shape!r}: expected one of {', '.join(SHAPES)}")


class MonaiVQVAE(nn.Module):
    """``monai.networks.nets.VQVAE`` with our model's interface: ``forward(x) -> VQOutput
    (recon, codes, vq_loss)`` for ``x (B, 1, *cfg.input_shape)`` in [0, 1] and a ``cfg``
    (a copy of the preset's, renamed), so that ``VQVAETask``, the engine,
    ``evaluate_slices`` and ``evaluate_volumes`` take it unchanged."""

    def __init__(
        self,
        cfg: VQVAEConfig,
        shape: str = "default",
        num_res_layers: int | None = None,
        **monai_kwargs: object,
    ) -> None:
        super().__init__()
        levels = len(cfg.widths)
        widths, res_layers = monai_widths(cfg, shape)
        self.num_res_layers = res_layers if num_res_layers is None else num_res_layers
        self.cfg = dataclasses.replace(
            cfg, name=f"monai-{cfg.name}", description="monai.networks.nets.VQVAE"
        )
        self.monai_config = {
            "spatial_dims": cfg.dims,
            "in_channels": 1,
            "out_channels": 1,
            "channels": widths,
            "num_res_layers": self.num_res_layers,
            "num_res_channels": widths,
            "downsample_parameters": tuple((2, 4, 1, 1) for _ in range(levels)),
            "upsample_parameters": tuple((2, 4, 1, 1, 0) for _ in range(levels)),
            "num_embeddings": cfg.quantizer.codebook_size,
            "embedding_dim": cfg.quantizer.dim,
            "commitment_cost": cfg.quantizer.beta,
            "ddp_sync": False,
            **monai_kwargs,
        }
        self.net = MonaiNet(**self.monai_config)

    def forward(self, x: Tensor) -> VQOutput:
        z = self.net.encode(x)
        # MONAI switches autocast off around its quantizer for CUDA only; off for any
        # device here, as in our quantizer (bf16 distances on a CPU pick wrong codes)
        with torch.autocast(x.device.type, enabled=False):
            quantized, vq_loss, codes = self.net.quantizer.quantizer(z.float())
        return VQOutput(self.net.decode(quantized), codes, vq_loss)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Codes ``(B, *grid_shape)`` via MONAI's own ``index_quantize`` (call in eval
        mode: in training mode MONAI's quantizer also updates its EMA codebook)."""
        return self.net.index_quantize(x)
