"""Edit an image through its codes: resample the code cells under a mask with a run's
prior and decode (what ``oasisvq inpaint`` runs).

    image (S, S) -> codes (h, w) by the VQ-VAE; mask image (S, S) -> cell mask (h, w): a
    cell is resampled when more than half of its pixels are masked (value > 0.5 of full)
    -> prior.inpaint(codes, cell mask) n times -> decoded images

A masked prior (maskgit) draws the masked cells given every kept cell; an
autoregressive prior draws them in raster order, each given the cells before it only
(see ``Prior.inpaint``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from oasisvq.data.images import read_gray8, to_square
from oasisvq.data.torch_dataset import to_uint8
from oasisvq.errors import ConfigError, DataError
from oasisvq.figures import inpainting_figure
from oasisvq.io import atomic_write, fresh_output_dir, write_json
from oasisvq.prior.base import DEFAULT_OPTIONS, Cond, Prior, SamplingOptions, check_guidance
from oasisvq.prior.sampling import Conditions, condition_batch
from oasisvq.runs import Run


@dataclass
class Inpainting:
    """An image, its codes, the cells resampled and ``n`` inpaintings (CPU tensors)."""

    image: np.ndarray  # (S, S) uint8: the input as the model reads it
    codes: Tensor  # (h, w) int64: its codes
    cell_mask: Tensor  # (h, w) bool: True = resampled
    inpainted: Tensor  # (n, h, w) int64


def cell_mask(mask: np.ndarray, grid: int) -> np.ndarray:
    """``mask (S, S)`` uint8 (0..255) or float in [0, 1] -> ``(grid, grid)`` bool: True where
    the mean of the mask over the cell's ``(S / grid)**2`` pixels exceeds 0.5."""
    m = np.asarray(mask, np.float32) / (255.0 if mask.dtype == np.uint8 else 1.0)
    s = m.shape[0]
    if m.shape != (s, s) or s % grid:
        raise ConfigError(f"mask of shape {m.shape}: expected a square side divisible by {grid}")
    c = s // grid
    return m.reshape(grid, c, grid, c).mean((1, 3)) > 0.5


@torch.no_grad()
def inpaint_image(
    run: Run,
    prior: Prior,
    image: np.ndarray,
    mask: np.ndarray,
    n: int = 4,
    cond: Cond | None = None,
    options: SamplingOptions = DEFAULT_OPTIONS,
) -> Inpainting:
    """``n`` inpaintings of ``image (S, S)`` uint8 where ``mask (S, S)`` (uint8 or [0, 1];
    see ``cell_mask``) covers a code cell, drawn ``options.batch_size`` (default all) at a
    time. ``cond``: conditions of length ``n`` for a conditional prior. A seed (and batch
    size) fixes the result."""
    if n < 1:
        raise ConfigError(f"--n {n}: expected at least 1 inpainting")
    cells = torch.from_numpy(cell_mask(mask, run.grid))
    if not bool(cells.any()):
        raise ConfigError(
            "the mask covers no code cell: a cell is resampled when more than half of its "
            f"{(run.config.image_size // run.grid) ** 2} pixels are masked"
        )
    codes = run.encode(image[None])[0].cpu()
    device = next(prior.parameters()).device
    seed = secrets.randbits(62) if options.seed is None else int(options.seed)
    gen = torch.Generator(device).manual_seed(seed)
    bs = options.batch_size or n
    out = []
    for s in range(0, n, bs):
        m = min(bs, n - s)
        c = None if cond is None else {k: v[s : s + m].to(device) for k, v in cond.items()}
        grids, masks = codes.expand(m, -1, -1).to(device), cells.expand(m, -1, -1).to(device)
        out.append(prior.inpaint(grids, masks, c, options, gen).cpu())
    return Inpainting(image, codes, cells, torch.cat(out))


def read_pair(
    image_path: Path, mask_path: Path, size: int, fit: str
) -> tuple[np.ndarray, np.ndarray]:
    """The image and its mask as ``(size, size)`` uint8, both brought to the square as the
    run's data were (``fit``); the mask must have the image's size."""
    image, mask = read_gray8(image_path), read_gray8(mask_path)
    if image.shape != mask.shape:
        raise DataError(
            mask_path,
            f"mask of {mask.shape[1]}x{mask.shape[0]} pixels; expected the image's "
            f"{image.shape[1]}x{image.shape[0]}",
        )
    return to_square(image, size, fit), to_square(mask, size, fit)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, "PNG"))


def _write_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # np.save on a path would append ".npy" to the temporary name
            np.save(f, array)

    atomic_write(path, write)


def write_inpainting(
    result: Inpainting,
    run: Run,
    out: Path,
    settings: dict,
    options: SamplingOptions = DEFAULT_OPTIONS,
) -> dict:
    """Write ``out/``: ``input.png``, ``reconstruction.png`` (its codes decoded),
    ``inpainted_<i>.png``, ``codes.npy`` (n, h, w) int16, ``input_codes.npy`` (h, w),
    ``cell_mask.npy`` (h, w) bool, the figure ``inpaint.png`` and ``inpaint.json``
    (``settings``, the number of cells resampled and the files). Returns that JSON's dict.
    ``options``: the decoder's precision and the inpainted images' texture (see
    ``Run.decode_samples``)."""
    recon = run.decode(result.codes[None], precision=options.precision)
    images = run.decode_samples(result.inpainted, options)
    pngs = {"input": result.image, "reconstruction": to_uint8(recon)[0]}
    pngs.update((f"inpainted_{i}", img) for i, img in enumerate(to_uint8(images)))
    arrays = {
        "codes": result.inpainted.numpy().astype(np.int16),
        "input_codes": result.codes.numpy().astype(np.int16),
        "cell_mask": result.cell_mask.numpy(),
    }
    files = {key: f"{key}.png" for key in pngs} | {key: f"{key}.npy" for key in arrays}
    for key, pixels in pngs.items():
        _write_png(out / files[key], pixels)
    for key, array in arrays.items():
        _write_npy(out / files[key], array)
    image = result.image.astype(np.float32) / 255.0
    inpainting_figure(image, recon[0], result.cell_mask, images, out / "inpaint.png")
    files["figure"] = "inpaint.png"
    info = {**settings, "cells_resampled": int(result.cell_mask.sum()), "files": files}
    write_json(out / "inpaint.json", info)
    return info


def inpaint_files(
    run: Run,
    image_path: str | Path,
    mask_path: str | Path,
    out: str | Path,
    prior: str | None = None,
    n: int = 4,
    options: SamplingOptions = DEFAULT_OPTIONS,
    conditions: Conditions | None = None,
    force: bool = False,
) -> dict:
    """``oasisvq inpaint``: read ``image_path`` and ``mask_path`` (8-bit grayscale, same
    size; white = resample), inpaint ``n`` times with the run's prior ``prior`` (default:
    the only or newest) and write the results to ``out`` (see ``write_inpainting``; new or
    empty, or an earlier inpainting folder replaced with ``force``)."""
    if run.dims == 3:
        raise ConfigError(
            f"{run.path}: a run of whole volumes; inpaint reads 2D images (for volumes, "
            "Prior.inpaint takes a 3D code grid and a mask of its cells)"
        )
    name = run.prior_name(prior)
    p = run.prior(name)
    image, mask = read_pair(
        Path(image_path), Path(mask_path), run.config.image_size, run.data_options.fit
    )
    cond = condition_batch(p.cfg, conditions, n)
    check_guidance(p.cfg, options.guidance)
    if options.texture:
        run.texture()
    folder = fresh_output_dir(out, force, "inpaint.json")
    result = inpaint_image(run, p, image, mask, n, cond, options)
    settings = {
        "run": str(run.path),
        "prior": name,
        "prior_arch": p.cfg.arch,
        "image": str(image_path),
        "mask": str(mask_path),
        "n": n,
        **options.to_dict(),  # steps None: the prior's own (autoregressive: a cell a step)
        "conditions": {k: v for k, v in (conditions or {}).items() if v is not None},
    }
    return write_inpainting(result, run, folder, settings, options)
