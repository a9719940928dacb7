"""Images that Pillow would decode into wrong or unsafe pixels are DataErrors naming the
file, and --skip-bad lists every file it skipped."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import blob_image
from PIL import Image

from oasisvq.data.images import read_gray8
from oasisvq.data.jpeg import jpeg_damage
from oasisvq.data.stats import describe, format_stats
from oasisvq.data.tree import load_tree
from oasisvq.errors import DataError

RNG = np.random.default_rng(7)


def _jpeg(path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(blob_image(RNG, 64)).save(path, "JPEG", **options)
    return path


def _refused(path: Path, reason: str) -> DataError:
    with pytest.raises(DataError, match=reason) as err:
        read_gray8(path)
    assert err.value.path == str(path) and "\n" not in str(err.value)
    return err.value


@pytest.mark.parametrize("side", [40, 64])  # over the limit (a warning), over twice it (an error)
def test_decompression_bomb_is_a_data_error(tmp_path: Path, monkeypatch, side: int) -> None:
    path = tmp_path / "bomb.png"
    Image.fromarray(blob_image(RNG, side)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    _refused(path, "too large to decode safely")


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"quality": 30},
        {"progressive": True},
        {"optimize": True},
        {"restart_marker_blocks": 3},
        {"subsampling": 0},
    ],
)
def test_sound_jpegs_are_accepted(tmp_path: Path, options: dict) -> None:
    path = _jpeg(tmp_path / "ok.jpg", **options)
    assert read_gray8(path).shape == (64, 64)
    colour = np.stack([blob_image(RNG, 33)] * 2 + [blob_image(RNG, 33)], -1)
    buf = io.BytesIO()
    Image.fromarray(colour).save(buf, "JPEG", **options)
    assert jpeg_damage(buf.getvalue()) is None  # interleaved, subsampled scans too


def _scan_start(data: bytes) -> int:
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


@pytest.mark.parametrize("damage", ["zeros", "garbage", "cut"])
def test_jpeg_with_damaged_data_is_refused(tmp_path: Path, damage: str) -> None:
    path = _jpeg(tmp_path / "bad.jpg", quality=95)
    good = np.asarray(Image.open(path))
    data = bytearray(path.read_bytes())
    middle = (_scan_start(data) + len(data)) // 2
    if damage == "zeros":
        data[middle : middle + 40] = bytes(40)
    elif damage == "garbage":
        data[middle : middle + 16] = bytes(RNG.integers(0, 255, 16, dtype=np.uint8))
    else:  # a block of data lost, the end marker still there
        del data[middle : middle + 64]
    path.write_bytes(bytes(data))
    with Image.open(path) as im:  # Pillow decodes it without a word...
        assert not np.array_equal(np.asarray(im), good)
    _refused(path, "damaged JPEG data")  # ...this reader does not


def test_png_with_a_damaged_chunk_is_refused(tmp_path: Path) -> None:
    image = blob_image(RNG, 48)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    data = buf.getvalue()
    idat = data.index(b"IDAT") + 4
    length = int.from_bytes(data[idat - 8 : idat - 4], "big")
    path = tmp_path / "bad.png"
    for offset in range(length - 1, 0, -1):  # a flipped byte that zlib lets through
        damaged = bytearray(data)
        damaged[idat + offset] ^= 0x10
        try:
            with Image.open(io.BytesIO(bytes(damaged))) as im:
                silent = not np.array_equal(np.asarray(im), image)
        except (OSError, SyntaxError):
            continue
        if silent:
            path.write_bytes(bytes(damaged))
            break
    assert path.exists(), "no silently damaging byte found"
    _refused(path, "unreadable or truncated")


@pytest.mark.parametrize(
    ("mode", "alpha"),
    [("RGBA", 0), ("LA", 0), ("LA", 128), ("RGBA", "edge")],
)
def test_images_with_transparent_pixels_are_refused(tmp_path: Path, mode: str, alpha) -> None:
    gray = blob_image(RNG, 32)
    a = np.full_like(gray, 255)
    if alpha == "edge":
        a[0, 0] = 0
    else:
        a[:] = alpha
    channels = [gray] * (3 if mode == "RGBA" else 1) + [a]
    path = tmp_path / "clear.png"
    Image.fromarray(np.stack(channels, -1), mode).save(path)
    _refused(path, "not opaque")


def test_opaque_alpha_and_palette_transparency(tmp_path: Path) -> None:
    gray = blob_image(RNG, 32)
    path = tmp_path / "opaque.png"
    Image.fromarray(np.stack([gray, gray, gray, np.full_like(gray, 255)], -1), "RGBA").save(path)
    assert np.array_equal(read_gray8(path), gray)
    palette = Image.fromarray(gray).convert("P")
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])
    palette.save(tmp_path / "p.png", transparency=palette.info["transparency"])
    _refused(tmp_path / "p.png", "not opaque")


def test_skip_bad_lists_every_skipped_file_in_the_summary(tmp_path: Path, monkeypatch) -> None:
    for split, n in (("train", 3), ("validate", 2)):
        for i in range(n):
            _jpeg(tmp_path / split / f"ok{i}.jpg")
    bad_jpeg = _jpeg(tmp_path / "train" / "zz.jpg")
    data = bytearray(bad_jpeg.read_bytes())
    data[_scan_start(data) + 10 : _scan_start(data) + 50] = bytes(40)
    bad_jpeg.write_bytes(bytes(data))
    bomb = tmp_path / "validate" / "zz.png"
    Image.fromarray(blob_image(RNG, 200)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(DataError, match="damaged JPEG"):
        load_tree(tmp_path, size=16)
    splits = load_tree(tmp_path, size=16, skip_bad=True)
    stats = describe(splits)
    assert stats["train"]["skipped"] == 1 and stats["validate"]["skipped"] == 1
    assert str(bad_jpeg) in stats["train"]["skipped_files"][0]
    assert str(bomb) in stats["validate"]["skipped_files"][0]
    text = format_stats(stats)
    assert "skipped files (2):" in text
    assert f"  train: {bad_jpeg}: damaged JPEG data" in text
    assert f"  validate: {bomb}: image too large" in text
