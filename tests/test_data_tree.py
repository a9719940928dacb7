"""Image trees, bad image files, layout detection, the decode-once cache and data stats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oasisvq.data.loader import DataOptions, detect_layout, get_split, load_splits
from oasisvq.data.stats import describe, format_stats
from oasisvq.data.tree import load_folder, load_tree
from oasisvq.errors import DataError


def png(path: Path, value: int = 100, size: int = 24, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(np.full((size, size), 1000 + value, np.uint16)).save(path)
    elif mode == "RGB":
        rgb = np.zeros((size, size, 3), np.uint8)
        rgb[..., 0] = value
        Image.fromarray(rgb).save(path)
    else:
        Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def class_tree(root: Path) -> Path:
    for split, classes in {
        "train": ("AD", "CN"),
        "validate": ("AD", "CN"),
        "test": ("CN",),
    }.items():
        for ci, cls in enumerate(classes):
            for i in range(3):
                png(root / split / cls / f"{cls}_{i}.png", value=10 + 50 * ci + i)
    return root


def flat_tree(root: Path, n: int = 4) -> Path:
    for split in ("train", "validate", "test"):
        for i in range(n):
            png(root / split / f"img_{i}.png", value=20 * i)
    return root


def test_class_folders_share_class_names(tmp_path):
    splits = load_tree(class_tree(tmp_path), size=16)
    assert set(splits) == {"train", "validate", "test"}
    for s in splits.values():
        assert s.class_names == ["AD", "CN"]
        assert s.images.shape[1:] == (16, 16)
    assert splits["train"].classes.tolist() == [0, 0, 0, 1, 1, 1]
    assert splits["test"].classes.tolist() == [1, 1, 1]  # CN is index 1 even without AD here
    assert all(Path(src).parent.name == "CN" for src in splits["test"].sources)


def test_flat_splits_are_unlabelled(tmp_path):
    splits = load_tree(flat_tree(tmp_path), size=24)
    s = splits["train"]
    assert s.class_names == [] and (s.classes == -1).all()
    assert s.images[:, 0, 0].tolist() == [0, 20, 40, 60]
    assert detect_layout(tmp_path) == "tree"


def test_empty_root_and_folder_without_images(tmp_path):
    with pytest.raises(DataError, match="empty") as err:
        detect_layout(tmp_path)
    assert err.value.path == str(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no data found"):
        detect_layout(tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no images") as err:
        load_tree(tmp_path, size=16)
    assert err.value.path == str(tmp_path / "train")
    with pytest.raises(DataError, match="no such"):
        detect_layout(tmp_path / "missing")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("truncated", "unreadable or truncated"), ("16bit", "16"), ("rgb", "colour")],
)
def test_bad_png_names_the_file(tmp_path, kind, reason):
    flat_tree(tmp_path, n=2)
    bad = tmp_path / "train" / "bad.png"
    if kind == "truncated":
        png(bad)
        bad.write_bytes(bad.read_bytes()[:30])
    elif kind == "16bit":
        png(bad, mode="I;16")
    else:
        png(bad, mode="RGB")
    with pytest.raises(DataError, match=reason) as err:
        load_tree(tmp_path, size=16)
    assert err.value.path == str(bad)
    assert str(err.value).startswith(f"{bad}: ")


def test_skip_bad_lists_skipped_files(tmp_path):
    flat_tree(tmp_path, n=3)
    bad = png(tmp_path / "validate" / "zz_rgb.png", mode="RGB")
    splits = load_tree(tmp_path, size=16, skip_bad=True)
    assert len(splits["validate"]) == 3 and len(splits["train"]) == 3
    assert len(splits["validate"].skipped) == 1 and str(bad) in splits["validate"].skipped[0]
    assert splits["train"].skipped == []


def test_all_files_bad_is_an_error_even_with_skip_bad(tmp_path):
    png(tmp_path / "train" / "a.png", mode="I;16")
    with pytest.raises(DataError, match="all skipped"):
        load_tree(tmp_path, size=16, skip_bad=True)


def test_gray_rgb_is_accepted(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(np.full((8, 8, 3), 77, np.uint8)).save(path)
    s = load_folder(path, size=8)
    assert s.images.shape == (1, 8, 8) and (s.images == 77).all()


def test_load_folder_recurses_into_class_folders(tmp_path):
    png(tmp_path / "x" / "top.png")
    png(tmp_path / "x" / "A" / "a.png")
    s = load_folder(tmp_path / "x", size=16)
    assert len(s) == 2 and s.class_names == ["A"] and s.classes.tolist() == [-1, 0]


def entries_of(cache: Path) -> list[Path]:
    """Cache entries (folders), ignoring lock files."""
    return [p for p in cache.iterdir() if p.is_dir()]


def test_cache_round_trip(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("OASISVQ_CACHE", str(cache))
    root = class_tree(tmp_path / "data")
    fresh = load_splits(root, DataOptions(size=16), cache=False)
    first = load_splits(root, DataOptions(size=16))
    entries = entries_of(cache)
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
    second = load_splits(root, DataOptions(size=16))
    assert isinstance(second["train"].images, np.memmap)
    for name in fresh:
        for s in (first[name], second[name]):
            np.testing.assert_array_equal(s.images, fresh[name].images)
            assert s.subjects == fresh[name].subjects and s.sources == fresh[name].sources
            assert s.classes.tolist() == fresh[name].classes.tolist()
            assert s.class_names == fresh[name].class_names
            assert np.isnan(s.positions).all() and np.isnan(s.ages).all()
    # other options or changed files get their own entry
    load_splits(root, DataOptions(size=8))
    png(root / "train" / "CN" / "CN_9.png", value=3)
    third = load_splits(root, DataOptions(size=16))
    assert len(third["train"]) == 7 and len(entries_of(cache)) == 3
    assert [p.name for p in cache.iterdir() if ".tmp" in p.name] == []


def test_get_split_names_what_exists(tmp_path):
    splits = load_tree(flat_tree(tmp_path), size=16)
    assert len(get_split(splits, "test")) == 4
    with pytest.raises(DataError, match="no 'val' split"):
        get_split(splits, "val", tmp_path)


def test_describe_and_format(tmp_path):
    splits = load_tree(class_tree(tmp_path), size=16)
    png(tmp_path / "validate" / "CN" / "zz.png", mode="RGB")
    splits = load_tree(tmp_path, size=16, skip_bad=True)
    d = describe(splits)
    assert d["train"]["count"] == 6 and d["train"]["classes"] == {"AD": 3, "CN": 3}
    assert d["test"]["classes"] == {"CN": 3} and d["validate"]["skipped"] == 1
    assert d["train"]["subjects"] == 6 and d["train"]["size"] == 16
    assert d["train"]["min"] == 10 and d["train"]["max"] == 62
    assert d["train"]["mean"] == pytest.approx(np.mean([10, 11, 12, 60, 61, 62]))
    assert d["train"]["age_min"] is None
    text = format_stats(d)
    lines = text.splitlines()
    assert lines[0].split() == [
        "split",
        "slices",
        "subjects",
        "size",
        "min",
        "max",
        "mean",
        "ages",
        "skipped",
    ]
    assert lines[1].split() == ["train", "6", "6", "16", "10", "62", "36.0", "-", "0"]
    assert "slices per class:" in text and "AD" in text
    flat = describe(load_tree(flat_tree(tmp_path / "f"), size=16))
    assert flat["train"]["classes"] == {"(none)": 4} and "per class" not in format_stats(flat)
