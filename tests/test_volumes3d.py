"""Whole volumes on one grid: reorientation, resampling, masking, crop/pad, affines,
scaling, subjects and splits, the cache, NIfTI output and ``oasisvq data --dims 3``."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from oasisvq.cli import main
from oasisvq.data import volumes3d
from oasisvq.data.loader import cache_dir, load_splits
from oasisvq.data.nifti import write_nifti
from oasisvq.data.options import DataOptions
from oasisvq.data.volumes3d import (
    VolumeSet,
    grid_affine,
    load_volumes,
    prepare_volume,
    resampled_grid,
)
from oasisvq.errors import ConfigError, DataError

SHAPE = (20, 24, 16)  # source volumes, RAS order, 1 mm
BOX = ((5, 15), (5, 19), (3, 13))  # the 'brain' in the source, [lo, hi) per axis: centred
ORIGIN = np.array([-30.0, 40.0, 7.0])  # world position of source voxel 0 (RAS storage)


def ras_affine(voxel: float = 1.0, origin: np.ndarray = ORIGIN) -> np.ndarray:
    a = np.diag([voxel, voxel, voxel, 1.0])
    a[:3, 3] = origin
    return a


def head(shape=SHAPE, box=BOX) -> np.ndarray:
    """RAS float32 volume: a box of tissue with an intensity ramp and a bright 4x4x4
    marker towards its right-anterior-superior corner. The marker starts at even
    indices (it becomes 2x2x2 voxels at 2 mm) and is over 0.5% of the brain (so the
    99.5th percentile is its value, and only it reaches 255)."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    inside = np.ones(shape, bool)
    for axis, (lo, hi) in zip((x, y, z), box, strict=True):
        inside &= (axis >= lo) & (axis < hi)
    vol = np.where(inside, 100.0 + x + 2 * y + 3 * z, 0.0).astype(np.float32)
    start = [(hi - 5) // 2 * 2 for _, hi in box]
    vol[tuple(slice(s, s + 4) for s in start)] = 500.0
    return vol


def marker_world(vol: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World mm of the centre of the brightest voxels."""
    ijk = np.argwhere(vol == vol.max()).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def as_lps(ras: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored left/posterior first: voxel (i, j, k) is RAS voxel
    (nx-1-i, ny-1-j, k)."""
    nx, ny, _ = ras.shape
    flip = np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    return ras[::-1, ::-1, :].copy(), affine @ flip


def as_psr(ras: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same image with permuted axes (as IXI stores it): voxel (i, j, k) is RAS
    voxel (k, ny-1-i, j)."""
    ny = ras.shape[1]
    perm = np.array([[0, 0, 1, 0], [-1, 0, 0, ny - 1], [0, 1, 0, 0], [0, 0, 0, 1]], float)
    return ras.transpose(1, 2, 0)[::-1].copy(), affine @ perm


def opts(**kw) -> DataOptions:
    return DataOptions(**{"dims": 3, "voxel_mm": 1.0, "volume_shape": (16, 20, 12), **kw})


def world_of(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return ijk @ affine[:3, :3].T + affine[:3, 3]


# ----------------------------------------------------------------------------- one volume


@pytest.mark.parametrize("store", [as_lps, as_psr], ids=["lps", "permuted"])
def test_any_storage_order_gives_the_same_ras_volume(tmp_path, store):
    ras = head()
    ref = prepare_volume(save(tmp_path / "ras.nii.gz", ras, ras_affine()), None, opts())
    other = prepare_volume(save(tmp_path / "o.nii.gz", *store(ras, ras_affine())), None, opts())
    np.testing.assert_array_equal(other[0], ref[0])
    np.testing.assert_allclose(other[2], ref[2], atol=1e-9)
    vol, _, affine = other
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    # the marker sits at the right-anterior-superior corner of the brain in the array
    brain = np.argwhere(vol > 0)
    marker = np.argwhere(vol == vol.max()).mean(axis=0)
    assert (marker > brain.mean(axis=0) + 1).all()
    np.testing.assert_allclose(marker_world(vol, affine), marker_world(ras, ras_affine()))


def test_resampling_1mm_to_2mm_halves_the_shape_and_keeps_world_positions(tmp_path):
    data, affine = as_lps(head(), ras_affine())
    shape, grid = resampled_grid(SHAPE, nib.as_closest_canonical(
        nib.Nifti1Image(data, affine)).affine, 2.0)  # fmt: skip
    assert shape == (10, 12, 8)
    assert np.allclose(np.linalg.norm(grid[:3, :3], axis=0), 2.0)
    # the field of view is kept: the outer corner of voxel 0 is the same world point
    np.testing.assert_allclose(world_of(grid, np.array([-0.5] * 3)), ORIGIN - 0.5)
    path = save(tmp_path / "a.nii.gz", data, affine)
    vol, mask, out_affine = prepare_volume(path, None, opts(voxel_mm=2.0, volume_shape=(10, 12, 8)))
    assert vol.shape == (10, 12, 8) and mask.all()
    assert np.allclose(np.abs(np.diag(out_affine)[:3]), 2.0)
    # the 4x4x4 marker became exactly 2x2x2 voxels of 2 mm at the same world point
    assert np.count_nonzero(vol == vol.max()) == 8
    np.testing.assert_allclose(
        marker_world(vol, out_affine), marker_world(head(), ras_affine()), atol=1e-6
    )


def test_the_affine_maps_output_voxels_to_their_source_points(tmp_path):
    ras = head()
    data, affine = as_psr(ras, ras_affine())
    path = save(tmp_path / "a.nii.gz", data, affine)
    labels = np.zeros(data.shape, np.uint8)
    labels[2:9, 3:11, 4:18] = 1  # an asymmetric mask, inside and outside the brain
    seg = save(tmp_path / "a_mask.nii.gz", labels, affine)
    for shape in [(16, 20, 12), (28, 30, 24), (8, 10, 8)]:  # crop, pad, crop into the brain
        vol, mask, out_affine = prepare_volume(path, seg, opts(volume_shape=shape))
        ijk = np.argwhere(np.ones(shape, bool))
        src = world_of(np.linalg.inv(affine), world_of(out_affine, ijk))
        np.testing.assert_allclose(src, np.rint(src), atol=1e-6)  # lands on voxel centres
        src = np.rint(src).astype(int)
        inside = ((src >= 0) & (src < data.shape)).all(axis=1)
        expected = np.zeros(len(ijk), bool)
        expected[inside] = labels[tuple(src[inside].T)] > 0
        np.testing.assert_array_equal(mask[tuple(ijk.T)], expected)
        assert (vol[~mask] == 0).all() and vol[mask].max() == 255


def test_mask_zeroes_the_outside_and_the_brain_is_centred(tmp_path):
    rng = np.random.default_rng(0)
    box = ((1, 9), (2, 14), (20, 26))  # brain in a corner of a 30^3 head
    ras = head((30, 30, 30), box) + rng.uniform(5, 20, (30, 30, 30)).astype(np.float32)
    labels = np.zeros((30, 30, 30), np.int16)
    labels[1:9, 2:14, 20:26] = rng.integers(1, 200, (8, 12, 6))  # a label map: > 0 is brain
    img = save(tmp_path / "t1" / "s01_T1.nii.gz", ras, ras_affine())
    seg = save(tmp_path / "seg" / "s01_T1_DLMUSE.nii.gz", *as_lps(labels, ras_affine()))
    shape = (16, 17, 12)
    vol, mask, affine = prepare_volume(img, seg, opts(volume_shape=shape))
    assert mask.sum() == 8 * 12 * 6 and (vol[~mask] == 0).all() and (vol[mask] > 0).mean() > 0.97
    for axis, n in enumerate(shape):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        before, after = present[0], n - 1 - present[-1]
        assert abs(before - after) <= 1, (axis, before, after)
    # the mask and the image share the grid: the mask's world box is the labels' box
    lo = world_of(affine, np.argwhere(mask).min(axis=0))
    np.testing.assert_allclose(lo, ORIGIN + [1, 2, 20])
    # without the mask the noisy background stays
    plain, plain_mask, _ = prepare_volume(img, None, opts(volume_shape=shape))
    assert plain_mask.all() and (plain[~mask] > 0).mean() > 0.5


def test_extent_reports_a_brain_larger_than_the_shape(tmp_path):
    ras = head()
    path = save(tmp_path / "a.nii.gz", ras, ras_affine())
    seg = save(tmp_path / "a_mask.nii.gz", (ras > 0).astype(np.uint8), ras_affine())
    small = volumes3d._prepare(path, seg, opts(volume_shape=(8, 8, 8)))
    assert small.extent == (10, 14, 10) and small.volume.shape == (8, 8, 8)
    assert small.mask.all()  # cropped into the brain on every side
    big = volumes3d._prepare(path, seg, opts(volume_shape=(40, 40, 40)))
    same = volumes3d._prepare(path, seg, opts(volume_shape=SHAPE))  # the source grid
    assert big.extent == same.extent == (10, 14, 10) and big.mask.sum() == 10 * 14 * 10
    np.testing.assert_array_equal(
        np.sort(big.volume, axis=None)[-1400:], np.sort(same.volume[same.mask])
    )
    assert np.count_nonzero(big.volume[~big.mask]) == 0


def test_robust_scaling_ignores_a_few_outliers(tmp_path):
    ras = head()
    brain = ras > 0
    ras[5, 5, 3] = 1e6  # one hot voxel must not darken the rest
    ras[6, 5, 3] = -1e6
    path = save(tmp_path / "a.nii.gz", ras, ras_affine())
    vol, _, _ = prepare_volume(path, None, opts(volume_shape=SHAPE))
    values = vol[brain]  # the brain is centred in SHAPE: the output is on the source grid
    assert (vol[~brain] == 0).all()
    lo, hi = np.percentile(ras[brain], [0.5, 99.5])
    assert hi == 500.0  # the marker, not the outlier
    expected = np.rint(np.clip((ras[brain] - lo) / (hi - lo), 0, 1) * 255)
    np.testing.assert_allclose(values, expected, atol=1)  # float32 vs float64 rounding
    assert values.min() == 0 and values.max() == 255
    assert np.count_nonzero(values == 255) == 64 + 1  # the marker and the hot voxel


def test_unreadable_files_and_empty_masks_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError) as err:
        prepare_volume(bad, None, opts())
    assert "bad.nii.gz" in str(err.value) and "\n" not in str(err.value)
    img = save(tmp_path / "a.nii.gz", head(), ras_affine())
    empty = save(tmp_path / "a_mask.nii.gz", np.zeros(SHAPE, np.uint8), ras_affine())
    with pytest.raises(DataError, match="a_mask.nii.gz: mask has no brain voxel"):
        prepare_volume(img, empty, opts())
    flat = save(tmp_path / "flat.nii.gz", np.zeros(SHAPE, np.float32), ras_affine())
    with pytest.raises(DataError, match="flat.nii.gz: volume has no foreground"):
        prepare_volume(flat, None, opts())
    with pytest.raises(ConfigError, match="voxel_mm=0.001: .* grid"):
        prepare_volume(img, None, opts(voxel_mm=0.001))


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"dims": 4}, "dims=4"),
        ({"dims": "3"}, "dims='3'"),
        ({"voxel_mm": 0}, "voxel_mm=0"),
        ({"voxel_mm": -1.5}, "voxel_mm=-1.5"),
        ({"voxel_mm": float("nan")}, "voxel_mm=nan"),
        ({"volume_shape": (96, 96)}, "volume_shape=(96, 96)"),
        ({"volume_shape": (4, 96, 96)}, "volume_shape=(4, 96, 96)"),
        ({"volume_shape": (96.5, 96, 96)}, "volume_shape=(96.5, 96, 96)"),
        ({"volume_shape": 96}, "volume_shape=96"),
    ],
)
def test_bad_options_are_one_line_config_errors(kw, message):
    with pytest.raises(ConfigError) as err:
        DataOptions(**kw)
    assert str(err.value).startswith(message + ":") and "\n" not in str(err.value)


def test_options_round_trip_through_json_and_old_configs_load_as_2d():
    o = DataOptions(dims=3, voxel_mm=1.5, volume_shape=[80, 96, 80])
    assert o.volume_shape == (80, 96, 80)
    again = DataOptions.from_dict(json.loads(json.dumps(o.to_dict())))
    assert again == o and isinstance(again.volume_shape, tuple)
    old = {"size": 64, "fit": "pad", "axis": "coronal", "mask": None, "split_seed": 3}
    loaded = DataOptions.from_dict(old)
    assert (loaded.dims, loaded.size, loaded.split_seed) == (2, 64, 3)
    with pytest.raises(DataError, match="3D runs need a folder of volumes"):
        load_splits(None, DataOptions(dims=3))


# ----------------------------------------------------------------------------- data sets


def ixi_tree(root: Path, sexes: list[str], splits: list[str] | None = None) -> list[str]:
    """IXI-like tree: t1/<subj>_T1.nii.gz (stored PSR) and seg/<subj>_T1_DLMUSE.nii.gz,
    each subject's brain shifted a little, plus participants.csv."""
    subjects = [f"IXI{100 + i:03d}-HH-{2000 + i}" for i in range(len(sexes))]
    rows = []
    for i, subj in enumerate(subjects):
        box = tuple((lo + i % 3, hi + i % 3) for lo, hi in ((2, 12), (3, 17), (2, 10)))
        ras = head(SHAPE, box)
        save(root / "t1" / f"{subj}_T1.nii.gz", *as_psr(ras, ras_affine()))
        labels = (ras > 0).astype(np.uint8) * 4
        save(root / "seg" / f"{subj}_T1_DLMUSE.nii.gz", *as_psr(labels, ras_affine()))
        row = {"subject": subj, "age": 20.5 + i, "sex": sexes[i]}
        if splits:
            row["split"] = splits[i]
        rows.append(row)
    with open(root / "participants.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return subjects


def test_splits_ages_and_sexes_from_participants(tmp_path):
    sexes = ["F", "male", "Female", "M", "x", ""]
    plan = ["train", "train", "train", "val", "validate", "train"]
    subjects = ixi_tree(tmp_path, sexes, plan)
    sets = load_volumes(tmp_path, opts(mask="auto"), cache=False)
    assert list(sets) == ["train", "validate", "test"]
    train, val, test = sets["train"], sets["validate"], sets["test"]
    assert sorted(train.subjects) == sorted(subjects[i] for i in (0, 1, 2, 5))
    assert sorted(val.subjects) == sorted(subjects[3:5])
    assert len(test) == 0 and test.volumes.shape == (0, 16, 20, 12) and test.shape == (16, 20, 12)
    want = {s: (20.5 + i, [0, 1, 0, 1, -1, -1][i]) for i, s in enumerate(subjects)}
    for s in (train, val):
        assert s.volumes.dtype == np.uint8 and s.volumes.shape[1:] == (16, 20, 12)
        assert s.masks.dtype == bool and s.affines.shape == (len(s), 4, 4)
        assert s.ages.dtype == np.float32 and s.sexes.dtype == np.int8 and s.masked.all()
        for subj, age, sex, path in zip(s.subjects, s.ages, s.sexes, s.paths, strict=True):
            assert (age, sex) == want[subj] and f"/t1/{subj}_T1" in path
        unit = s.to_unit(0)
        assert unit.dtype == np.float32 and unit.shape == s.shape and unit.max() == 1.0
    # without a split column the fractions and seed split subjects, never volumes
    ixi_tree(tmp_path, sexes)
    sets = load_volumes(tmp_path, opts(split_fractions=(0.5, 0.25, 0.25)), cache=False)
    seen = [set(s.subjects) for s in sets.values()]
    assert all(len(x) >= 1 for x in seen) and sum(map(len, seen)) == 6
    assert not sets["train"].masked.any() and sets["train"].masks.all()


def test_oasis1_download_layout_with_clinical_table(tmp_path):
    """Analyze T88 images as 'oasisvq download oasis1' leaves them: only the masked image
    of a session is used, FSL_SEG is its mask, age and sex come from the clinical table."""
    ras = head()
    root = tmp_path / "oasis1"
    for n, session in enumerate(["OAS1_0001_MR1", "OAS1_0002_MR1", "OAS1_0002_MR2"]):
        base = root / f"disc1/{session}"
        t88, fsl = base / "PROCESSED/MPRAGE/T88_111", base / "FSL_SEG"
        for folder in (t88, fsl):
            folder.mkdir(parents=True)
        stem = f"{session}_mpr_n4_anon_111_t88"
        scan = nib.AnalyzeImage((ras * (n + 1)).astype(np.int16)[..., None], ras_affine())
        nib.save(scan, str(t88 / f"{stem}_masked_gfc.img"))
        nib.save(
            nib.AnalyzeImage(np.ones(SHAPE, np.int16), ras_affine()), str(t88 / f"{stem}_gfc.img")
        )
        seg = nib.AnalyzeImage((ras > 0).astype(np.uint8) * 2, ras_affine())
        nib.save(seg, str(fsl / f"{stem}_masked_gfc_fseg.img"))
    (root / "oasis_cross-sectional.csv").write_text(
        "ID,M/F,Hand,Age,Educ,SES,MMSE,CDR\n"
        "OAS1_0001_MR1,F,R,74,2,3,29,0\n"
        "OAS1_0002_MR1,m,R,55,4,1,29,0\n"
        "OAS1_0002_MR2,M,R,55,4,1,29,0\n"
    )
    sets = load_volumes(root, opts(mask="auto", split_fractions=(1.0, 0.0, 0.0)))
    s = sets["train"]
    assert len(s) == 3 and sorted(set(s.subjects)) == ["OAS1_0001", "OAS1_0002"]
    assert all(p.endswith("_masked_gfc.img") for p in s.paths) and s.masked.all()
    about = dict(zip(s.paths, zip(s.ages.tolist(), s.sexes.tolist(), strict=True), strict=True))
    assert sorted(about.values()) == [(55.0, 1), (55.0, 1), (74.0, 0)]
    # the Analyze pair reads as the same data and affine in a NIfTI file would: Analyze
    # has no orientation field, nibabel gives it the radiological x axis (right->left)
    first = s.paths.index(min(s.paths))
    analyze = nib.load(s.paths[first])
    assert nib.aff2axcodes(analyze.affine) == ("L", "A", "S")
    ref = save(tmp_path / "ref.nii.gz", ras, analyze.affine)
    ref_mask = save(tmp_path / "ref_mask.nii.gz", (ras > 0).astype(np.uint8), analyze.affine)
    np.testing.assert_array_equal(s.volumes[first], prepare_volume(ref, ref_mask, opts())[0])
    marker = np.argwhere(s.volumes[first] == 255).mean(axis=0)
    assert marker[0] < np.argwhere(s.volumes[first] > 0).mean(axis=0)[0]  # now on the left
    (root / "oasis_cross-sectional.csv").write_text("ID,M/F,Age\nOAS1_0001_MR1,F,old\n")
    with pytest.raises(DataError, match=r"oasis_cross-sectional.csv: OAS1_0001_MR1: age 'old'"):
        load_volumes(root, opts(mask="auto"), cache=False)


def test_the_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    subjects = ixi_tree(
        tmp_path / "d", ["F", "M", "F", "M"], ["train", "train", "validate", "test"]
    )
    root = tmp_path / "d"
    first = load_volumes(root, opts(mask="auto"))
    fresh = load_volumes(root, opts(mask="auto"), cache=False)
    for name in first:
        for field in ("volumes", "masks", "affines", "ages", "sexes", "masked", "extents"):
            np.testing.assert_array_equal(getattr(first[name], field), getattr(fresh[name], field))
        assert first[name].subjects == fresh[name].subjects

    def fail(*_args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(volumes3d, "_prepare", fail)
    again = load_volumes(root, opts(mask="auto"))  # from the cache
    assert again["train"].subjects == first["train"].subjects
    assert not [p for p in cache_dir().iterdir() if ".tmp" in p.name]
    with pytest.raises(AssertionError, match="decoded again"):  # a changed option
        load_volumes(root, opts(mask="auto", volume_shape=(16, 20, 16)))
    seg = root / "seg" / f"{subjects[2]}_T1_DLMUSE.nii.gz"
    st = seg.stat()
    os.utime(seg, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    with pytest.raises(AssertionError, match="decoded again"):
        load_volumes(root, opts(mask="auto"))


def test_skip_bad_lists_the_file_in_its_split(tmp_path):
    ixi_tree(tmp_path, ["F", "M", "F", "M"], ["train", "train", "validate", "validate"])
    (tmp_path / "t1" / "IXI101-HH-2001_T1.nii.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="IXI101-HH-2001_T1.nii.gz"):
        load_volumes(tmp_path, opts(), cache=False)
    sets = load_volumes(tmp_path, opts(skip_bad=True), cache=False)
    assert len(sets["train"]) == 1 and len(sets["train"].skipped) == 1
    assert "IXI101-HH-2001_T1.nii.gz" in sets["train"].skipped[0]


# ----------------------------------------------------------------------------- output


def test_grid_affine_is_centred_on_the_origin():
    a = grid_affine((96, 112, 96), 2.0)
    np.testing.assert_allclose(world_of(a, np.array([47.5, 55.5, 47.5])), 0.0)
    np.testing.assert_allclose(world_of(a, np.array([0.0, 0, 0])), [-95.0, -111.0, -95.0])
    assert nib.aff2axcodes(a) == ("R", "A", "S") and np.allclose(np.diag(a)[:3], 2.0)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_write_nifti_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(1)
    unit = rng.uniform(0, 1, (6, 7, 5)).astype(np.float32)
    volume = unit if dtype == np.float32 else np.rint(unit * 255).astype(np.uint8)
    affine = grid_affine((6, 7, 5), 2.0)
    affine[:3, 3] += [3.0, -4.0, 5.5]
    path = tmp_path / "out" / "rec.nii.gz"
    path.parent.mkdir()
    path.write_text("an older file")  # replaced whole
    assert write_nifti(path, volume, affine) == path
    img = nib.load(str(path))
    tol = 1e-6 if dtype == np.float32 else 0.5 / 255 + 1e-6
    np.testing.assert_allclose(img.get_fdata(), unit, atol=tol)
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.header.get_qform(), affine, atol=1e-5)
    assert img.header.get_xyzt_units()[0] == "mm"
    assert sorted(p.name for p in path.parent.iterdir()) == ["rec.nii.gz"]
    with pytest.raises(ConfigError, match=r"\.nii\.gz or \.nii"):
        write_nifti(tmp_path / "rec.png", volume, affine)
    with pytest.raises(ConfigError, match="NaN"):
        write_nifti(tmp_path / "nan.nii", np.full((2, 2, 2), np.nan), affine)


def test_a_prepared_volume_written_back_overlays_its_source(tmp_path):
    data, affine = as_lps(head(), ras_affine())
    vol, _, out_affine = prepare_volume(save(tmp_path / "a.nii.gz", data, affine), None, opts())
    img = nib.load(str(write_nifti(tmp_path / "rec.nii.gz", vol, out_affine)))
    np.testing.assert_allclose(
        marker_world(img.get_fdata(), img.affine), marker_world(data, affine), atol=1e-4
    )


# ----------------------------------------------------------------------------- command line


def test_cli_data_dims_3(tmp_path, capsys):
    ixi_tree(tmp_path, ["F", "M", "female", "?"], ["train", "train", "train", "validate"])
    argv = ["data", str(tmp_path), "--dims", "3", "--voxel-mm", "1", "--mask", "auto"]
    assert main([*argv, "--volume-shape", "16", "20", "12", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["shape"] == [16, 20, 12] and d["voxel_mm"] == 1.0
    train = d["splits"]["train"]
    assert (train["volumes"], train["subjects"], train["masked"]) == (3, 3, 3)
    assert (train["female"], train["male"], train["sex_unknown"]) == (2, 1, 0)
    assert (train["age_min"], train["age_median"], train["age_max"]) == (20.5, 21.5, 22.5)
    assert d["splits"]["validate"]["sex_unknown"] == 1 and d["splits"]["test"]["volumes"] == 0
    assert d["brain_extent"]["max"] == [10, 14, 8] and d["brains_cut"] == 0
    assert main([*argv, "--volume-shape", "8", "20", "12"]) == 0
    text = capsys.readouterr().out
    assert "volumes: 8x20x12 voxels of 1 mm" in text
    assert "4 brain(s) larger than 8x20x12" in text
    assert "20-22" in text and "train" in text and "validate" in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--voxel-mm", "0"], "argument --voxel-mm: 0: expected a finite number > 0"),
        (["--volume-shape", "4", "96", "96"], "argument --volume-shape: 4: expected an integer"),
        (["--volume-shape", "96", "96"], "argument --volume-shape: expected 3 arguments"),
        (["--dims", "4"], "argument --dims: invalid choice: 4"),
    ],
)
def test_cli_bad_values_are_one_line_errors(tmp_path, capsys, extra, message):
    assert main(["data", str(tmp_path), "--dims", "3", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_cli_dims_3_needs_volumes(tmp_path, capsys):
    assert main(["data", "--dims", "3"]) == 2
    assert "needs a data root" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert main(["data", str(tmp_path), "--dims", "3"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no NIfTI/Analyze volumes" in err[0]


def test_volume_set_checks_its_lengths():
    empty = VolumeSet.empty((8, 8, 8), 2.0)
    assert len(empty) == 0 and empty.shape == (8, 8, 8)
    with pytest.raises(ValueError, match="subjects has 1 entries for 0 volumes"):
        VolumeSet(
            empty.volumes, empty.masks, empty.affines, ["x"], empty.ages, empty.sexes, [], 2.0
        )


def test_a_subset_keeps_every_field_of_the_volumes_it_picks():
    rng = np.random.default_rng(0)
    n, shape = 4, (8, 8, 8)
    full = VolumeSet(
        volumes=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        masks=rng.random((n, *shape)) > 0.5,
        affines=rng.random((n, 4, 4)),
        subjects=[f"s{i}" for i in range(n)],
        ages=np.arange(n, dtype=np.float32) + 20,
        sexes=np.array([0, 1, -1, 1], np.int8),
        paths=[f"v{i}.nii.gz" for i in range(n)],
        voxel_mm=2.0,
        extents=np.arange(3 * n, dtype=np.int16).reshape(n, 3),
    )
    pick = np.array([3, 1])
    part = full.subset(pick)
    assert (
        len(part) == 2
        and part.subjects == ["s3", "s1"]
        and part.paths == ["v3.nii.gz", "v1.nii.gz"]
    )
    for name in ("volumes", "masks", "affines", "ages", "sexes", "masked", "extents"):
        assert np.array_equal(getattr(part, name), getattr(full, name)[pick]), name
    assert part.voxel_mm == 2.0
