"""A patch discriminator and the hinge losses of adversarial decoder training.

A reconstruction loss (MSE, SSIM) is minimised by the mean of the images a code could
stand for, which is blurrier than any one of them. An adversarial term (as in VQGAN,
Esser et al., 2021) asks the decoder for images that a discriminator cannot tell from
real slices or volumes, patch by patch: it trades a little SSIM for the texture of real
images. The same design serves both: 2D convolutions for slices, 3D for whole volumes.

    image (B, 1, S, S) -> n_layers x [conv 4x4 stride 2, LeakyReLU] -> conv 3x3
    -> logits (B, 1, S / 2**n_layers, S / 2**n_layers), one per overlapping patch
    volume (B, 1, X, Y, Z) -> the same with 4x4x4 and 3x3x3 kernels
    -> logits (B, 1, X / 2**n, Y / 2**n, Z / 2**n)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call


class PatchDiscriminator(nn.Sequential):
    """``forward(x (B, 1, S, S) in ~[0, 1]) -> logits (B, 1, S / 2**n, S / 2**n)``, or with
    ``dims=3`` volumes ``(B, 1, X, Y, Z)`` in and logits ``(B, 1, X / 2**n, ...)`` out;
    channels ``width * 2**i`` at level ``i``; GroupNorm after the first level (no batch
    statistics, so a batch of real and one of generated images are judged alike)."""

    def __init__(self, width: int = 16, n_layers: int = 3, dims: int = 2) -> None:
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
        layers: list[nn.Module] = []
        cin = 1
        for i in range(n_layers):
            cout = width * 2**i
            layers.append(conv(cin, cout, 4, 2, padding=1))
            if i > 0:
                layers.append(nn.GroupNorm(min(8, cout // 4), cout))
            layers.append(nn.LeakyReLU(0.2))
            cin = cout
        layers.append(conv(cin, 1, 3, padding=1))
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x - 0.5)


def hinge_losses(disc: nn.Module, fake: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
    """``(generator loss, discriminator loss)`` for ``fake`` and ``real`` ``(B, 1, S, S)``
    (or volumes ``(B, 1, X, Y, Z)`` with a 3D ``disc``).

    Discriminator: ``relu(1 - D(real)) + relu(1 + D(fake))`` with ``fake`` detached, so
    its gradient reaches the discriminator alone. Generator: ``-D(fake)`` through a copy
    of the discriminator's weights cut from the graph, so its gradient reaches the
    decoder alone. Their sum can therefore be minimised by one optimizer in one step.
    """
    d_real, d_fake = disc(real), disc(fake.detach())
    d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    frozen = {name: p.detach() for name, p in disc.named_parameters()}
    g_loss = -functional_call(disc, frozen, (fake,)).mean()
    return g_loss, d_loss
