"""Decoding 2D image files and bringing arrays to a square size.

All images leave this module as ``uint8`` arrays of shape ``(size, size)``; the
model later scales them to ``[0, 1]``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from oasisvq.data.jpeg import jpeg_damage
from oasisvq.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
FIT_MODES = ("resize", "pad", "crop")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def read_gray8(path: str | Path) -> np.ndarray:
    """Decode an 8-bit single-channel image file. Returns ``(H, W) uint8``.

    Refuses colour images (RGB/RGBA/palette with colour), 16-bit images and images
    with transparent pixels rather than converting them silently: a user must know
    their data is not what the model expects. Also refuses what Pillow would decode
    into wrong pixels without a word (a JPEG or PNG whose compressed data is damaged)
    and images over Pillow's decompression-bomb limit.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # over Image.MAX_IMAGE_PIXELS Pillow only warns (and errs at twice that)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_compressed_data(path, im.format)
                return _gray_pixels(path, im)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(path, f"image too large to decode safely ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"unreadable or truncated image ({exc})") from exc


def _check_compressed_data(path: Path, fmt: str | None) -> None:
    """Damage in the compressed data that decoding alone would not report: PNG chunk
    checksums (Pillow's ``verify``), JPEG Huffman data (:mod:`oasisvq.data.jpeg`)."""
    if fmt == "PNG":
        with Image.open(path) as im:
            im.verify()
    elif fmt == "JPEG" and (reason := jpeg_damage(path.read_bytes())) is not None:
        raise DataError(path, f"damaged JPEG data ({reason})")


def _gray_pixels(path: Path, im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise DataError(path, f"{mode} image (16/32-bit); expected 8-bit grayscale")
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
    if im.mode in ("LA", "La", "RGBA", "RGBa"):
        alpha = np.asarray(im.getchannel("A"))
        if (alpha != 255).any():
            seen = int((alpha != 255).sum())
            raise DataError(
                path,
                f"{mode} image with {seen} of {alpha.size} pixels not opaque (alpha < 255); "
                "expected an opaque grayscale image",
            )
        im = im.convert("RGB" if im.mode.startswith("RGB") else "L")
    if im.mode == "RGB":
        arr = np.asarray(im)
        if not (
            np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
        ):
            raise DataError(path, f"{mode} colour image; expected 8-bit grayscale")
        return np.ascontiguousarray(arr[..., 0])
    if im.mode != "L":
        raise DataError(path, f"unsupported image mode {mode}; expected 8-bit grayscale")
    im.load()
    return np.asarray(im).copy()


def to_square(img: np.ndarray, size: int, fit: str = "resize") -> np.ndarray:
    """Bring a 2D image to ``(size, size) uint8``.

    ``img`` is ``uint8`` or float in ``[0, 1]``. ``fit``: ``resize`` stretches to the
    square (what the original report did), ``pad`` pads the short side with zeros
    (keeps the aspect ratio), ``crop`` takes the central square.
    """
    if fit not in FIT_MODES:
        raise ValueError(f"fit={fit!r}: expected one of {FIT_MODES}")
    if img.dtype != np.uint8:
        img = np.clip(np.rint(np.asarray(img, np.float32) * 255.0), 0, 255).astype(np.uint8)
    h, w = img.shape
    if fit == "pad" and h != w:
        side = max(h, w)
        canvas = np.zeros((side, side), np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        canvas[top : top + h, left : left + w] = img
        img = canvas
    elif fit == "crop" and h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        img = img[top : top + side, left : left + side]
    if img.shape == (size, size):
        return np.ascontiguousarray(img)
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))
