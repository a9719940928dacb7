"""The OASIS keras_png_slices release: names, positions, masks kept apart from images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oasisvq.data.loader import DataOptions, detect_layout, load_splits
from oasisvq.data.oasis_png import (
    is_oasis_png,
    load_oasis_png,
    load_oasis_png_masks,
    mask_path,
    parse_name,
)
from oasisvq.errors import DataError

LABELS = (0, 85, 170, 255)
# split -> {subject: number of slices}
PLAN = {"train": {"001": 12, "002": 3}, "validate": {"003": 2}, "test": {"004": 2}}


def image_value(subject: str, k: int) -> int:
    """Grey value of an image: odd numbers, never one of the mask labels."""
    return 100 + int(subject) * 20 + k * 2 + 1


def make_release(root: Path, size: int = 32) -> Path:
    for split, subjects in PLAN.items():
        img_dir = root / f"keras_png_slices_{split}"
        seg_dir = root / f"keras_png_slices_seg_{split}"
        img_dir.mkdir(parents=True)
        seg_dir.mkdir(parents=True)
        for subject, n in subjects.items():
            for k in range(n):
                img = np.full((size, size), image_value(subject, k), np.uint8)
                Image.fromarray(img).save(img_dir / f"case_{subject}_slice_{k}.nii.png")
                seg = np.zeros((size, size), np.uint8)
                seg[:, size // 2 :] = LABELS[k % 4]  # right half carries the label
                Image.fromarray(seg).save(seg_dir / f"seg_{subject}_slice_{k}.nii.png")
    return root


def test_detection(tmp_path):
    assert not is_oasis_png(tmp_path)
    make_release(tmp_path)
    assert is_oasis_png(tmp_path)
    assert detect_layout(tmp_path) == "oasis-png"


def test_parse_name():
    assert parse_name(Path("case_001_slice_12.nii.png")) == ("001", 12)
    assert parse_name(Path("case_OAS1_0042_slice_3.nii.png")) == ("OAS1_0042", 3)
    with pytest.raises(DataError, match="does not match") as err:
        parse_name(Path("/x/seg_001_slice_1.nii.png"))
    assert err.value.path == "/x/seg_001_slice_1.nii.png"


def test_images_only_never_masks(tmp_path):
    make_release(tmp_path)
    splits = load_oasis_png(tmp_path, size=32)
    assert list(splits) == ["train", "validate", "test"]
    for split, subjects in PLAN.items():
        s = splits[split]
        assert len(s) == sum(subjects.values())  # not doubled by the seg folder
        assert all(f"keras_png_slices_{split}/case_" in src for src in s.sources)
        assert s.images.shape[1:] == (32, 32) and s.images.dtype == np.uint8
        values = set(np.unique(s.images).tolist())
        assert values.isdisjoint(LABELS)  # no mask pixels leaked in
        assert (s.classes == -1).all() and np.isnan(s.ages).all()


def test_order_subjects_and_positions(tmp_path):
    make_release(tmp_path)
    train = load_oasis_png(tmp_path, size=32)["train"]
    assert train.subjects == ["001"] * 12 + ["002"] * 3
    # numeric slice order (slice_10 after slice_9), values decoded from the right file
    expected = [image_value("001", k) for k in range(12)] + [
        image_value("002", k) for k in range(3)
    ]
    assert train.images[:, 0, 0].tolist() == expected
    np.testing.assert_allclose(train.positions[:12], np.arange(12) / 11, atol=1e-6)
    np.testing.assert_allclose(train.positions[12:], [0, 0.5, 1], atol=1e-6)


def test_subjects_do_not_cross_splits(tmp_path):
    make_release(tmp_path)
    splits = load_oasis_png(tmp_path, size=32)
    seen = [set(s.subjects) for s in splits.values()]
    assert sum(len(x) for x in seen) == len(set().union(*seen)) == 4


def test_badly_named_file_is_an_error_or_skipped(tmp_path):
    make_release(tmp_path)
    odd = tmp_path / "keras_png_slices_train" / "slice7.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(odd)
    (tmp_path / "keras_png_slices_train" / "README.txt").write_text("not an image")
    with pytest.raises(DataError, match="case_<subject>_slice_<k>") as err:
        load_oasis_png(tmp_path, size=32)
    assert err.value.path == str(odd)
    train = load_oasis_png(tmp_path, size=32, skip_bad=True)["train"]
    assert len(train) == 15 and len(train.skipped) == 1 and str(odd) in train.skipped[0]


def test_truncated_png_is_an_error_or_skipped(tmp_path):
    make_release(tmp_path)
    bad = tmp_path / "keras_png_slices_validate" / "case_003_slice_1.nii.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError) as err:
        load_oasis_png(tmp_path, size=32)
    assert err.value.path == str(bad)
    val = load_oasis_png(tmp_path, size=32, skip_bad=True)["validate"]
    assert val.sources == [str(tmp_path / "keras_png_slices_validate" / "case_003_slice_0.nii.png")]
    assert len(val.skipped) == 1 and str(bad) in val.skipped[0]


def test_empty_split_folder_is_an_error(tmp_path):
    (tmp_path / "keras_png_slices_train").mkdir()
    with pytest.raises(DataError, match="holds no") as err:
        load_oasis_png(tmp_path, size=32)
    assert err.value.path.endswith("keras_png_slices_train")


def test_masks_are_aligned_and_nearest_resized(tmp_path):
    make_release(tmp_path)
    train = load_oasis_png(tmp_path, size=32)["train"]
    masks = load_oasis_png_masks(tmp_path, "train", size=20)
    assert masks.shape == (15, 20, 20) and masks.dtype == np.uint8
    assert set(np.unique(masks).tolist()) <= set(LABELS)  # nearest: no new values
    ks = [int(src.rsplit("_slice_", 1)[1].split(".")[0]) for src in train.sources]
    assert masks[:, 0, -1].tolist() == [LABELS[k % 4] for k in ks]
    assert (masks[:, :, :10] == 0).all()


def test_masks_follow_given_sources(tmp_path):
    make_release(tmp_path)
    sources = [
        str(tmp_path / "keras_png_slices_test" / f"case_004_slice_{k}.nii.png") for k in (1, 0)
    ]
    masks = load_oasis_png_masks(tmp_path, "test", size=32, sources=sources)
    assert masks[:, 0, -1].tolist() == [LABELS[1], LABELS[0]]
    assert mask_path(tmp_path, "test", Path(sources[0])).name == "seg_004_slice_1.nii.png"


def test_missing_mask_is_an_error(tmp_path):
    make_release(tmp_path)
    gone = tmp_path / "keras_png_slices_seg_validate" / "seg_003_slice_1.nii.png"
    gone.unlink()
    with pytest.raises(DataError, match="missing segmentation") as err:
        load_oasis_png_masks(tmp_path, "validate", size=32)
    assert err.value.path == str(gone)


def test_ages_from_a_participants_table(tmp_path):
    make_release(tmp_path)
    assert np.isnan(load_oasis_png(tmp_path, size=16)["train"].ages).all()  # no table: unknown
    # subject ids match with or without zero padding / the OASIS prefix; 004 is missing
    (tmp_path / "participants.csv").write_text("subject,age\n1,70\nOAS1_0002,81.5\n0003,NA\n")
    splits = load_oasis_png(tmp_path, size=16)
    assert splits["train"].ages.tolist() == [70.0] * 12 + [81.5] * 3
    assert np.isnan(splits["validate"].ages).all() and np.isnan(splits["test"].ages).all()
    (tmp_path / "participants.csv").write_text("subject,age\n1,old\n")
    with pytest.raises(DataError, match="age 'old' is not a number"):
        load_oasis_png(tmp_path, size=16)


def test_through_the_loader(tmp_path, monkeypatch):
    monkeypatch.setenv("OASISVQ_CACHE", str(tmp_path / "cache"))
    make_release(tmp_path / "data")
    splits = load_splits(tmp_path / "data", DataOptions(size=16))
    assert {k: len(v) for k, v in splits.items()} == {"train": 15, "validate": 2, "test": 2}
    assert splits["train"].images.shape[1:] == (16, 16)
