"""``oasisvq.data.prepare``: extracted OASIS-1 sessions -> the OASIS PNG slice layout."""

from __future__ import annotations

import csv
import errno
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from oasisvq.cli import main
from oasisvq.data import prepare as P
from oasisvq.data.prepare import prepare_oasis1
from oasisvq.errors import ConfigError, DataError

SHAPE = (20, 24, 18)
SPLITS = ("train", "validate", "test")
CLINICAL = """ID,M/F,Hand,Age,Educ,SES,MMSE,CDR,eTIV,nWBV,ASF,Delay
OAS1_0001_MR1,F,R,74,2,3,29,0,1344,0.743,1.306,N/A
OAS1_0002_MR1,F,R,55,4,1,29,0,1147,0.81,1.531,N/A
OAS1_0003_MR1,F,R,73,4,3,27,0.5,1454,0.708,1.207,N/A
OAS1_0004_MR1,M,R,28,,,,,1588,0.803,1.105,N/A
OAS1_0005_MR1,M,R,18,,,,,1737,0.848,1.01,N/A
OAS1_0006_MR1,F,R,24,,,,,1131,0.862,1.551,N/A
OAS1_0002_MR2,F,R,55,4,1,29,0,1147,0.81,1.531,30
"""


def _analyze(path: Path, data: np.ndarray) -> None:
    img = nib.AnalyzeImage(data, None)
    img.header.set_zooms((1.0, 1.0, 1.0))
    nib.save(img, str(path))


def brain(subject: int) -> np.ndarray:
    """An off-centre ellipsoid plus a bump on one side: flips would show."""
    x, y, z = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    out = ((x - 9) / 6) ** 2 + ((y - 11) / 8) ** 2 + ((z - 8) / 6) ** 2 < 1
    out |= ((x - 15) / 3) ** 2 + ((y - 16) / 3) ** 2 + ((z - 8) / 4) ** 2 < 1
    return out


def write_session(src: Path, subject: int, visit: int = 1, disc: int = 1, seg: bool = True) -> Path:
    """One extracted OASIS-1 session (only the files ``download`` extracts)."""
    sid = f"OAS1_{subject:04d}_MR{visit}"
    session = src / f"disc{disc}" / sid
    t88 = session / "PROCESSED" / "MPRAGE" / "T88_111"
    t88.mkdir(parents=True)
    mask = brain(subject)
    rng = np.random.default_rng(subject * 10 + visit)
    labels = np.where(mask, rng.integers(1, 4, SHAPE), 0).astype(np.uint8)
    image = np.where(mask, 300 * labels.astype(np.int16) + rng.integers(0, 50, SHAPE), 0).astype(
        np.int16
    )
    stem = f"{sid}_mpr_n4_anon_111_t88"
    _analyze(t88 / f"{stem}_masked_gfc", image)
    if seg:
        (session / "FSL_SEG").mkdir()
        _analyze(session / "FSL_SEG" / f"{stem}_masked_gfc_fseg", labels)
    return t88 / f"{stem}_masked_gfc.img"


@pytest.fixture
def src(tmp_path) -> Path:
    root = tmp_path / "download"
    for subject in range(1, 7):
        write_session(root, subject, disc=1 if subject < 4 else 2)
    write_session(root, 2, visit=2)  # a reliability re-scan of subject 2
    (root / "oasis_cross-sectional.csv").write_text(CLINICAL)
    return root


def _pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def _labels(out: Path) -> list[dict]:
    with open(out / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_layout_splits_and_labels(src, tmp_path):
    out = tmp_path / "slices"
    summary = prepare_oasis1(src, out, size=32, fractions=(0.5, 0.25, 0.25), seed=3)
    subjects: dict[str, set[str]] = {}
    for split in SPLITS:
        cases = _pngs(out / f"keras_png_slices_{split}")
        segs = _pngs(out / f"keras_png_slices_seg_{split}")
        assert cases and all(re.fullmatch(r"case_\d{4}_slice_\d+\.nii\.png", c) for c in cases)
        assert segs == [c.replace("case_", "seg_", 1) for c in cases]
        subjects[split] = {c.split("_")[1] for c in cases}
        assert summary["slices"][split] == len(cases) == summary["seg_slices"][split]
        assert summary["subjects"][split] == len(subjects[split])
    assert sum(len(s) for s in subjects.values()) == 6  # never a subject in two splits
    assert set().union(*subjects.values()) == {f"{i:04d}" for i in range(1, 7)}
    assert [len(subjects[s]) for s in SPLITS] == [2, 2, 2]  # round(6 * 0.25) == 2
    rows = _labels(out)
    assert list(rows[0]) == ["subject", "session", "split", "age", "sex", "mmse", "cdr"]
    assert [r["session"] for r in rows] == [f"OAS1_{i:04d}_MR1" for i in range(1, 7)]
    row3 = rows[2]
    assert (row3["age"], row3["sex"], row3["mmse"], row3["cdr"]) == ("73", "F", "27", "0.5")
    assert rows[4]["cdr"] == "" and rows[4]["age"] == "18"
    assert all(r["subject"] in subjects[r["split"]] for r in rows)
    assert any("OAS1_0002_MR2: repeat session" in n for n in summary["notes"])
    assert summary["clinical_table"].endswith("oasis_cross-sectional.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["download", "slices"]  # no temp left


def _pairs(out: Path, split: str = "train") -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, segmentation) arrays of every slice of a split."""
    pairs = []
    for case in sorted((out / f"keras_png_slices_{split}").glob("*.png")):
        seg_path = out / f"keras_png_slices_seg_{split}" / case.name.replace("case_", "seg_", 1)
        with Image.open(case) as im, Image.open(seg_path) as sm:
            assert im.mode == sm.mode == "L" and im.size == sm.size
            pairs.append((np.asarray(im), np.asarray(sm)))
    return pairs


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a & b) / max(np.sum(a | b), 1))


def test_label_slices_lie_on_the_image_slices(src, tmp_path):
    """Without resampling (``fit="pad"`` to the 24-pixel side) brain pixels coincide."""
    prepare_oasis1(src, tmp_path / "slices", size=24, fit="pad")
    for image, seg in _pairs(tmp_path / "slices"):
        assert image.shape == (24, 24)
        assert set(np.unique(seg)) <= {0, 85, 170, 255}
        assert not np.any((image > 0) & (seg == 0))  # no image pixel outside the labels
        assert _iou(image > 0, seg > 0) > 0.95  # (the darkest brain pixels normalise to 0)


def test_resized_label_slices_stay_aligned(src, tmp_path):
    prepare_oasis1(src, tmp_path / "slices", size=32)
    pairs = _pairs(tmp_path / "slices")
    aligned = np.mean([_iou(image > 0, seg > 0) for image, seg in pairs])
    flipped = np.mean([_iou(image > 0, seg[::-1, ::-1] > 0) for image, seg in pairs])
    assert aligned > 0.75 and aligned > flipped + 0.1


def test_seg_labels_follow_image_intensities(src, tmp_path):
    """The fake images are brighter where the label is higher: bright pixels carry label 3."""
    out = tmp_path / "slices"
    prepare_oasis1(src, out, size=20)
    case = sorted((out / "keras_png_slices_train").glob("*_slice_5.nii.png"))[0]
    image = np.asarray(Image.open(case))
    seg = np.asarray(
        Image.open(out / "keras_png_slices_seg_train" / case.name.replace("case_", "seg_", 1))
    )
    assert image[seg == 255].mean() > image[seg == 85].mean() + 50


def test_seeded_split_is_deterministic(src, tmp_path):
    a = prepare_oasis1(src, tmp_path / "a", size=16, seed=1)
    b = prepare_oasis1(src, tmp_path / "b", size=16, seed=1)
    assert _labels(tmp_path / "a") == _labels(tmp_path / "b")
    assert a["slices"] == b["slices"]


def test_refuses_to_overwrite_without_force(src, tmp_path):
    out = tmp_path / "slices"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists; pass --force"):
        prepare_oasis1(src, out, size=16)
    assert (out / "keep.txt").read_text() == "mine"
    prepare_oasis1(src, out, size=16, force=True)
    assert not (out / "keep.txt").exists() and (out / "labels.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["download", "slices"]


def test_disk_full_leaves_nothing(src, tmp_path, monkeypatch):
    def full(path, image):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(P, "_write_png", full)
    out = tmp_path / "slices"
    with pytest.raises(DataError, match="slices: disk full"):
        prepare_oasis1(src, out, size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["download"]


def test_bad_session_stops_or_is_skipped(src, tmp_path):
    image = next(src.glob("disc2/OAS1_0005_MR1/PROCESSED/MPRAGE/T88_111/*.img"))
    image.write_bytes(image.read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match=r"OAS1_0005_MR1.*truncated"):
        prepare_oasis1(src, tmp_path / "slices", size=16)
    assert not (tmp_path / "slices").exists()
    summary = prepare_oasis1(src, tmp_path / "slices", size=16, skip_bad=True)
    assert sum(summary["subjects"].values()) == 5
    assert any(n.startswith("skipped") and "OAS1_0005" in n for n in summary["notes"])


def test_missing_segmentation_and_clinical_table(tmp_path):
    src = tmp_path / "download"
    for subject in (1, 2, 3):
        write_session(src, subject, seg=subject != 2)
    summary = prepare_oasis1(src, tmp_path / "slices", size=16, fractions=(1.0, 0.0, 0.0))
    assert summary["clinical_table"] is None
    assert summary["subjects"] == {"train": 3, "validate": 0, "test": 0}
    assert summary["seg_slices"]["train"] < summary["slices"]["train"]
    assert any("OAS1_0002_MR1: no FSL_SEG" in n for n in summary["notes"])
    assert {r["age"] for r in _labels(tmp_path / "slices")} == {""}


def test_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no OASIS-1 sessions found"):
        prepare_oasis1(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(DataError, match="no such folder"):
        prepare_oasis1(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ConfigError, match="summing to 1"):
        prepare_oasis1(tmp_path / "empty", tmp_path / "out", fractions=(0.5, 0.1, 0.1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_prepared_data_loads_with_the_project_loader(src, tmp_path):
    loader = pytest.importorskip("oasisvq.data.loader")
    pytest.importorskip("oasisvq.data.oasis_png")
    out = tmp_path / "slices"
    summary = prepare_oasis1(src, out, size=32)
    assert loader.detect_layout(out) == "oasis-png"
    splits = loader.load_splits(out, loader.DataOptions(size=32), cache=False)
    for split in SPLITS:
        assert len(splits[split]) == summary["slices"][split]
        assert splits[split].images.shape[1:] == (32, 32)
    # ages come from labels.csv, by subject (OAS1_0001 is 74, OAS1_0004 is 28, ...)
    age_of = {1: 74, 2: 55, 3: 73, 4: 28, 5: 18, 6: 24}
    for s in splits.values():
        assert s.ages.tolist() == [age_of[int(subject)] for subject in s.subjects]


def test_cli_prepare(src, tmp_path, capsys):
    argv = [
        "prepare",
        "oasis1",
        "--from",
        str(src),
        "--to",
        str(tmp_path / "out"),
        "--size",
        "16",
        "--quiet",
    ]
    assert main([*argv, "--fractions", "0.6,0.2,0.2", "--seed", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(argv) == 3
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"oasisvq prepare: error: {tmp_path / 'out'}: already exists; pass --force (force=True) to replace it"
    )
    assert main([*argv, "--fractions", "0.5,0.5"]) == 2  # argparse's usage error
