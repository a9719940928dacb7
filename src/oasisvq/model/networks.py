"""Encoders and decoders.

``seed``: the original report's Keras layers, exactly (see ``SeedEncoder``).
``resnet``: a compact residual design (stride-2 convs, pre-activation residual
blocks with GroupNorm, nearest-neighbour or transposed-conv upsampling, a decoder that
may be deeper than the encoder) of our own. With ``full_res=False`` no layer holds
feature maps at the image's resolution: the first stride-2 conv reads the image and a
sub-pixel head (conv to 4 channels, ``PixelShuffle(2)``) writes it, which saves about a
fifth of a training step on CPU.

Images enter as ``(B, 1, S, S)`` in ``[0, 1]`` and leave as ``(B, 1, S, S)`` logits of
the same range (unclamped); latents are ``(B, D, S / 2**n_down, S / 2**n_down)``. The
``resnet`` design also takes volumes (``dims=3``): ``(B, 1, X, Y, Z)`` in and out,
latents ``(B, D, X / 2**n_down, Y / 2**n_down, Z / 2**n_down)``, with the same layers
in 3D (a voxel-shuffle head in place of ``PixelShuffle``).
"""

from __future__ import annotations

from torch import Tensor, nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONVT = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, dims: int = 2) -> nn.Module:
    return _CONV[dims](cin, cout, k, stride, padding=k // 2)


class VoxelShuffle(nn.Module):
    """``PixelShuffle`` in any dims: ``(B, C * r**n, *S) -> (B, C, *(s * r for s in S))``."""

    def __init__(self, r: int, dims: int) -> None:
        super().__init__()
        self.r, self.dims = r, dims

    def forward(self, x: Tensor) -> Tensor:
        b, c, *size = x.shape
        r, n = self.r, self.dims
        out_c = c // r**n
        x = x.view(b, out_c, *([r] * n), *size)  # (B, C, r, .., r, S1, .., Sn)
        # interleave each factor r after its spatial axis: (B, C, S1, r, S2, r, ...)
        order = [0, 1] + [a for i in range(n) for a in (2 + n + i, 2 + i)]
        return x.permute(*order).reshape(b, out_c, *(s * r for s in size))


def _shuffle(r: int, dims: int) -> nn.Module:
    # the 2D head keeps nn.PixelShuffle, which checkpoints of 2D runs were written with
    return nn.PixelShuffle(r) if dims == 2 else VoxelShuffle(r, dims)


def _upsample(cin: int, cout: int, mode: str, dims: int = 2) -> list[nn.Module]:
    """x2 upsampling layers: ``"nearest"`` (nearest neighbour, then conv 3x3) or ``"convt"``
    (transposed conv 4x4 stride 2, 2.25x fewer multiply-adds per output pixel). A flat
    list, so that "nearest" keeps the parameter names of checkpoints written before
    the choice existed."""
    if mode == "nearest":
        return [nn.Upsample(scale_factor=2, mode="nearest"), _conv(cin, cout, dims=dims)]
    if mode == "convt":
        return [_CONVT[dims](cin, cout, 4, 2, padding=1)]
    raise ValueError(f"upsample {mode!r}: expected 'nearest' or 'convt'")


def _up(cin: int, cout: int, stride: int) -> nn.ConvTranspose2d:
    # 3x3 transposed conv with Keras "same" padding: out = in * stride
    return nn.ConvTranspose2d(cin, cout, 3, stride, padding=1, output_padding=stride - 1)


class SeedEncoder(nn.Sequential):
    """Conv 3x3 stride 2 with 32, 32, 64, 64 filters, Conv 3x3 128, all ReLU, then 1x1 to ``dim``."""

    def __init__(
        self, dim: int, widths: tuple[int, ...] = (32, 32, 64, 64), top: int = 128
    ) -> None:
        layers: list[nn.Module] = []
        cin = 1
        for w in widths:
            layers += [_conv(cin, w, 3, 2), nn.ReLU()]
            cin = w
        layers += [_conv(cin, top), nn.ReLU(), nn.Conv2d(top, dim, 1)]
        super().__init__(*layers)


class SeedDecoder(nn.Sequential):
    """ConvTranspose 3x3: 128 (stride 1), 64, 64, 32, 32 (stride 2), ReLU; then 1 filter, linear."""

    def __init__(
        self, dim: int, widths: tuple[int, ...] = (64, 64, 32, 32), top: int = 128
    ) -> None:
        layers: list[nn.Module] = [_up(dim, top, 1), nn.ReLU()]
        cin = top
        for w in widths:
            layers += [_up(cin, w, 2), nn.ReLU()]
            cin = w
        layers += [_up(cin, 1, 1)]
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv3x3(act(norm(conv3x3(act(norm(x))))))."""

    def __init__(self, ch: int, dims: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(min(8, ch // 4), ch),
            nn.SiLU(),
            _conv(ch, ch, dims=dims),
            nn.GroupNorm(min(8, ch // 4), ch),
            nn.SiLU(),
            _conv(ch, ch, dims=dims),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResEncoder(nn.Module):
    """Stem conv (``full_res``), then per level: stride-2 conv and ``blocks[i]`` residual
    blocks; 1x1 to ``dim``.

    ``widths[i]`` is the channel count after the i-th downsampling.
    """

    def __init__(
        self,
        dim: int,
        widths: tuple[int, ...],
        blocks: tuple[int, ...],
        mid_blocks: int,
        full_res: bool = True,
        dims: int = 2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(1, widths[0] // 2, dims=dims)] if full_res else []
        cin = widths[0] // 2 if full_res else 1
        for w, nb in zip(widths, blocks, strict=True):
            layers.append(_conv(cin, w, 3, 2, dims))
            layers += [ResBlock(w, dims) for _ in range(nb)]
            cin = w
        layers += [ResBlock(cin, dims) for _ in range(mid_blocks)]
        layers += [nn.GroupNorm(min(8, cin // 4), cin), nn.SiLU(), _conv(cin, dim, 1, dims=dims)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ResDecoder(nn.Module):
    """Mirror of ``ResEncoder``: 1x1 from ``dim``, residual blocks, then per level
    ``blocks[i]`` residual blocks and a x2 upsampling (see ``_upsample``); norm, SiLU and
    a 3x3 conv to one channel. Without ``full_res`` the last level does not upsample:
    its conv writes 4 channels at half resolution, ``PixelShuffle(2)`` puts them side by
    side, ``(B, 4, S/2, S/2) -> (B, 1, S, S)`` (in 3D, 8 channels and ``VoxelShuffle``)."""

    def __init__(
        self,
        dim: int,
        widths: tuple[int, ...],
        blocks: tuple[int, ...],
        mid_blocks: int,
        upsample: str = "nearest",
        full_res: bool = True,
        dims: int = 2,
    ) -> None:
        super().__init__()
        cin = widths[-1]
        layers: list[nn.Module] = [_conv(dim, cin, 1, dims=dims)]
        layers += [ResBlock(cin, dims) for _ in range(mid_blocks)]
        for i, (w, nb) in enumerate(zip(reversed(widths), reversed(blocks), strict=True)):
            layers += [ResBlock(cin, dims) for _ in range(nb)]
            if full_res or i < len(widths) - 1:
                cout = w // 2
                layers += _upsample(cin, cout, upsample, dims)
                cin = cout
        if full_res:
            head = [_conv(cin, 1, dims=dims)]
        else:
            head = [_conv(cin, 2**dims, dims=dims), _shuffle(2, dims)]
        layers += [nn.GroupNorm(min(8, max(1, cin // 4)), cin), nn.SiLU(), *head]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
