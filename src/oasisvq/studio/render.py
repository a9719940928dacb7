"""Arrays -> pictures for the page: RGB uint8 images ``(H, W, 3)`` and small HTML.

Inputs are images ``(S, S)`` (uint8, or float in ``[0, 1]``), code grids ``(h, w)`` int
and cell masks ``(h, w)`` bool; nothing here touches a model.
"""

from __future__ import annotations

import html

import matplotlib
import numpy as np

SELECT_RGB = np.array([255, 60, 60], np.float32)  # selected cells in the Edit tab
DIFF_RANGE = 0.5  # |recon - original| at which the difference map saturates


def as_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 as it is; float in [0, 1] -> uint8 0..255 (any shape)."""
    a = np.asarray(image)
    return a if a.dtype == np.uint8 else np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)


def gray(image: np.ndarray) -> np.ndarray:
    """``(S, S)`` uint8 or float in [0, 1] -> ``(S, S, 3)`` uint8."""
    return np.repeat(as_uint8(image)[..., None], 3, axis=2)


def code_colours(n_codes: int) -> np.ndarray:
    """``(K, 3)`` uint8: the evaluation figures' colours (``turbo`` in a fixed shuffled
    order, so that neighbouring code indices still look different)."""
    n = max(int(n_codes), 1)
    order = np.random.default_rng(0).permutation(n)
    return np.round(matplotlib.colormaps["turbo"]((order + 0.5) / n)[:, :3] * 255).astype(np.uint8)


def _cells_to_pixels(cells: np.ndarray, size: int) -> np.ndarray:
    """Nearest upsampling of an ``(h, w, ...)`` array to ``(size, size, ...)``."""
    h, w = cells.shape[:2]
    rows = np.arange(size) * h // size
    cols = np.arange(size) * w // size
    return cells[rows][:, cols]


def code_map(codes: np.ndarray, n_codes: int, size: int) -> np.ndarray:
    """The code grid in colour, ``(size, size, 3)`` uint8."""
    return _cells_to_pixels(code_colours(n_codes)[np.asarray(codes)], size)


def code_grid_html(codes: np.ndarray, n_codes: int, width_px: int = 256) -> str:
    """The code grid as an HTML table of coloured cells; hovering a cell shows its code
    (its ``title``), and small grids print the code in the cell."""
    codes = np.asarray(codes)
    h, w = codes.shape
    colours = code_colours(n_codes)
    cell = max(1, width_px // w)
    text = w <= 16
    rows = []
    for r in range(h):
        tds = []
        for c in range(w):
            k = int(codes[r, c])
            red, green, blue = (int(v) for v in colours[k])
            ink = "#000" if 0.3 * red + 0.59 * green + 0.11 * blue > 140 else "#fff"
            tds.append(
                f'<td title="row {r}, column {c}: code {k}" data-code="{k}" '
                f'style="background:rgb({red},{green},{blue});color:{ink};width:{cell}px;'
                f'height:{cell}px">{k if text else ""}</td>'
            )
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return f'<table class="code-grid">{"".join(rows)}</table>'


def diff_map(diff: np.ndarray) -> np.ndarray:
    """``recon - original`` in [-1, 1] -> blue (too dark) / white / red (too bright) RGB."""
    u = np.clip(np.asarray(diff, np.float32) / (2 * DIFF_RANGE) + 0.5, 0, 1)
    return np.round(matplotlib.colormaps["coolwarm"](u)[..., :3] * 255).astype(np.uint8)


def cells_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``image (S, S)`` with the cells of ``mask (h, w)`` tinted red, ``(S, S, 3)`` uint8."""
    rgb = gray(image).astype(np.float32)
    m = _cells_to_pixels(np.asarray(mask, bool), rgb.shape[0])
    rgb[m] = (1 - alpha) * rgb[m] + alpha * SELECT_RGB
    return np.round(rgb).astype(np.uint8)


def heat_overlay(
    image: np.ndarray, heat: np.ndarray, vmax: float, alpha: float = 0.6
) -> np.ndarray:
    """``heat (S, S)`` (0..vmax) in ``inferno`` blended over ``image (S, S)``."""
    u = np.clip(np.asarray(heat, np.float32) / max(vmax, 1e-6), 0, 1)
    colour = matplotlib.colormaps["inferno"](u)[..., :3] * 255
    rgb = (1 - alpha) * gray(image).astype(np.float32) + alpha * colour
    return np.round(rgb).astype(np.uint8)


def escape(text: object) -> str:
    return html.escape(str(text))
