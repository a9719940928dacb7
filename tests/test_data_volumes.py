"""NIfTI/Analyze reading, slicing along anatomical axes, and subject-wise volume trees."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from oasisvq.data import volumes
from oasisvq.data.loader import DataOptions, detect_layout, load_splits
from oasisvq.data.volumes import (
    find_volumes,
    has_volumes,
    is_mask_file,
    load_volume_tree,
    pair_masks,
    read_volume,
    slice_volume,
    split_subjects,
    subject_id,
    voxel_axis,
)
from oasisvq.errors import ConfigError, DataError

RNG = np.random.default_rng(0)


def ras_head(shape: tuple[int, int, int] = (16, 16, 12)) -> np.ndarray:
    """A RAS-ordered float32 'head': a box of tissue with an intensity ramp, zeros around."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    vol = (100.0 + 3 * x + 2 * y + z).astype(np.float32)
    inside = (
        (x >= 2)
        & (x < shape[0] - 2)
        & (y >= 2)
        & (y < shape[1] - 2)
        & (z >= 3)
        & (z < shape[2] - 3)
    )
    return np.where(inside, vol, 0).astype(np.float32)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


# ----------------------------------------------------------------------------- read_volume


def test_read_nifti_squeezes_trailing_singleton_and_keeps_affine(tmp_path):
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [-10, 5, 7]
    data = RNG.integers(0, 1000, (5, 6, 7, 1)).astype(np.int16)
    path = save_nifti(tmp_path / "a.nii.gz", data, affine)
    vol, aff = read_volume(path)
    assert vol.dtype == np.float32 and vol.shape == (5, 6, 7)
    np.testing.assert_array_equal(vol, data[..., 0])
    np.testing.assert_allclose(aff, affine)


def test_read_analyze_pair_from_img_or_hdr(tmp_path):
    data = RNG.integers(0, 500, (6, 7, 5)).astype(np.int16)
    nib.save(nib.AnalyzeImage(data, np.diag([1.0, 1.0, 1.0, 1.0])), str(tmp_path / "s.img"))
    assert (tmp_path / "s.hdr").is_file()
    for name in ("s.img", "s.hdr"):
        vol, _ = read_volume(tmp_path / name)
        np.testing.assert_array_equal(vol, data)


def _analyze(tmp_path: Path, stem: str = "s") -> Path:
    data = RNG.integers(1, 500, (6, 7, 5)).astype(np.int16)
    nib.save(nib.AnalyzeImage(data, np.eye(4)), str(tmp_path / f"{stem}.img"))
    return tmp_path / f"{stem}.img"


def test_truncated_analyze_img_names_the_img(tmp_path):
    img = _analyze(tmp_path)
    img.write_bytes(img.read_bytes()[:100])
    with pytest.raises(DataError, match="truncated") as err:
        read_volume(tmp_path / "s.hdr")
    assert err.value.path == str(img)


def test_analyze_img_larger_than_header_is_a_mismatch(tmp_path):
    img = _analyze(tmp_path)
    img.write_bytes(img.read_bytes() + b"\0" * 64)
    with pytest.raises(DataError, match="expects") as err:
        read_volume(img)
    assert "s.img" in str(err.value)


def test_analyze_hdr_without_img_and_img_without_hdr(tmp_path):
    img = _analyze(tmp_path)
    img.unlink()
    with pytest.raises(DataError, match="no image file s.img") as err:
        read_volume(tmp_path / "s.hdr")
    assert err.value.path.endswith("s.hdr")
    img2 = _analyze(tmp_path, "t")
    (tmp_path / "t.hdr").unlink()
    with pytest.raises(DataError, match="no header file t.hdr") as err:
        read_volume(img2)
    assert err.value.path.endswith("t.img")


def test_nan_and_inf_volumes_are_refused(tmp_path):
    data = RNG.random((5, 5, 5)).astype(np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    path = save_nifti(tmp_path / "nan.nii.gz", data)
    with pytest.raises(DataError, match="2 NaN/inf") as err:
        read_volume(path)
    assert err.value.path == str(path)


@pytest.mark.parametrize("shape", [(5, 6), (5, 6, 7, 2)])
def test_non_3d_volumes_are_refused(tmp_path, shape):
    path = save_nifti(tmp_path / "x.nii", RNG.random(shape).astype(np.float32))
    with pytest.raises(DataError, match="expected a 3D volume") as err:
        read_volume(path)
    assert err.value.path == str(path)


def test_truncated_and_garbage_nifti(tmp_path):
    path = save_nifti(tmp_path / "t.nii.gz", RNG.random((20, 20, 20)).astype(np.float32))
    path.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(DataError) as err:
        read_volume(path)
    assert err.value.path == str(path)
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"not a nifti at all" * 10)
    with pytest.raises(DataError, match="unreadable") as err:
        read_volume(junk)
    assert err.value.path == str(junk)


# ----------------------------------------------------------------------------- slicing


def permuted(ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Store a RAS volume as (I, R, A): voxel axis 0 runs inferior, so axial is axis 0."""
    nz = ras.shape[2]
    stored = ras.transpose(2, 0, 1)[::-1].copy()
    affine = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [-1, 0, 0, nz - 1], [0, 0, 0, 1]], float)
    return stored, affine


def test_axis_is_found_from_the_affine():
    _, affine = permuted(ras_head())
    assert nib.aff2axcodes(affine) == ("I", "R", "A")
    assert voxel_axis(affine, "axial") == 0
    assert voxel_axis(affine, "sagittal") == 1
    assert voxel_axis(affine, "coronal") == 2
    assert voxel_axis(np.eye(4), "axial") == 2
    with pytest.raises(ConfigError):
        voxel_axis(np.eye(4), "oblique")


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_slices_do_not_depend_on_storage_order(axis):
    ras = ras_head()
    stored, affine = permuted(ras)
    a_img, a_pos, a_idx = slice_volume(ras, np.eye(4), axis, size=16)
    b_img, b_pos, b_idx = slice_volume(stored, affine, axis, size=16)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_pos, b_pos)
    if axis == "axial":  # stored axis 0 is flipped S
        np.testing.assert_array_equal(b_idx, ras.shape[2] - 1 - a_idx)
    else:
        np.testing.assert_array_equal(a_idx, b_idx)


def test_axial_display_has_anterior_up_and_right_on_the_right():
    ras = np.zeros((16, 16, 12), np.float32)
    ras[3:13, 3:13, 3:9] = 50.0
    ras[10:13, 10:13, 3:9] = 200.0  # right-anterior corner is bright
    ras[3:6, 3:6, 3:9] = 120.0  # left-posterior corner is mid grey
    stored, affine = permuted(ras)
    images, _, _ = slice_volume(stored, affine, "axial", size=16)
    img = images[len(images) // 2]
    assert img[3:6, 10:13].min() == 255  # top rows = anterior, right columns = R
    assert 0 < img[10:13, 3:6].max() < 255  # bottom-left = posterior-left


def test_coronal_display_has_superior_up():
    ras = np.zeros((16, 12, 16), np.float32)
    ras[3:13, 3:9, 3:13] = 50.0
    ras[3:13, 3:9, 10:13] = 200.0  # superior band is bright
    images, _, _ = slice_volume(ras, np.eye(4), "coronal", size=16)
    img = images[0]
    assert img[3:6].max() == 255 and img[10:13].max() < 255


def test_empty_and_tiny_slices_are_removed():
    ras = ras_head((16, 16, 12))  # tissue in z = 3..8
    ras[8, 8, 10] = 150.0  # a single voxel: far below 5% of the largest slice's area
    images, positions, indices = slice_volume(ras, np.eye(4), "axial", size=16)
    np.testing.assert_array_equal(indices, np.arange(3, 9))
    np.testing.assert_allclose(positions, np.linspace(0, 1, 6), atol=1e-6)
    assert images.shape == (6, 16, 16) and images.dtype == np.uint8


def test_mask_zeroes_outside_voxels_and_selects_slices():
    vol = RNG.uniform(50, 150, (16, 16, 12)).astype(np.float32)  # no zero background
    mask = np.zeros(vol.shape, np.uint8)
    mask[4:12, 5:11, 2:7] = 3  # label > 0 is brain
    images, _, indices = slice_volume(vol, np.eye(4), "axial", mask=mask, size=16)
    np.testing.assert_array_equal(indices, np.arange(2, 7))
    for img, k in zip(images, indices, strict=True):
        outside = ~(mask[:, :, k].T[::-1] > 0)
        assert outside.any() and img[outside].max() == 0
        assert (img[~outside] > 0).mean() > 0.9
    no_mask, _, _ = slice_volume(vol, np.eye(4), "axial", size=16)
    assert len(no_mask) == 12 and (no_mask > 0).mean() > 0.95


def test_normalisation_is_robust_to_outliers():
    vol = ras_head()
    vol[8, 8, 6] = 1e7
    images, _, _ = slice_volume(vol, np.eye(4), "axial", size=16)
    brain = images[images > 0]
    assert brain.max() == 255 and 60 < brain.mean() < 200


def test_slice_volume_errors():
    with pytest.raises(DataError, match="no foreground"):
        slice_volume(np.zeros((8, 8, 8), np.float32), np.eye(4), name="v.nii")
    with pytest.raises(DataError, match="constant intensity"):
        slice_volume(np.ones((8, 8, 8), np.float32), np.eye(4))
    with pytest.raises(DataError, match="mask shape"):
        slice_volume(ras_head(), np.eye(4), mask=np.ones((3, 3, 3)))


# ----------------------------------------------------------------------------- file names


def test_mask_file_detection_and_subject_ids(tmp_path):
    oasis = "OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc.img"
    assert not is_mask_file(Path(oasis))  # "masked" is not "mask"
    assert is_mask_file(Path("OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc_fseg.img"))
    assert is_mask_file(Path("IXI013-HH-1212_T1_DLMUSE.nii.gz"))
    assert is_mask_file(Path("brain_mask.nii"))
    assert is_mask_file(tmp_path / "FSL_SEG" / "x.img", tmp_path)
    assert is_mask_file(tmp_path / "masks" / "x.nii.gz", tmp_path)
    assert not is_mask_file(tmp_path / "x.nii.gz", tmp_path)
    assert subject_id(Path(oasis)) == "OAS1_0001"
    assert subject_id(Path("IXI013-HH-1212_T1.nii.gz")) == "IXI013-HH-1212"
    assert subject_id(Path("sub-07_ses-2_T1w.nii.gz")) == "sub-07"
    assert subject_id(Path("brain01.nii.gz")) == "brain01"


def test_oasis1_layout_prefers_the_masked_image_and_pairs_fseg(tmp_path):
    session = tmp_path / "OAS1_0001_MR1"
    t88 = session / "PROCESSED" / "MPRAGE" / "T88_111"
    fsl = session / "FSL_SEG"
    raw = session / "RAW"
    for d in (t88, fsl, raw):
        d.mkdir(parents=True)
    data = np.ones((4, 4, 4), np.int16)
    for folder, name in [
        (raw, "OAS1_0001_MR1_mpr-1_anon"),
        (t88, "OAS1_0001_MR1_mpr_n4_anon_111_t88_gfc"),
        (t88, "OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc"),
        (fsl, "OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc_fseg"),
    ]:
        nib.save(nib.AnalyzeImage(data, np.eye(4)), str(folder / f"{name}.img"))
    images, masks = find_volumes(tmp_path)
    assert [p.name for p in images] == ["OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc.img"]
    assert [p.name for p in masks] == ["OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc_fseg.img"]
    assert pair_masks(images, masks) == {images[0]: masks[0]}
    assert has_volumes(tmp_path)


def test_has_volumes_and_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert not has_volumes(tmp_path)
    save_nifti(tmp_path / "deep" / "a.nii.gz", ras_head())
    assert has_volumes(tmp_path)
    assert detect_layout(tmp_path) == "volumes"


# ----------------------------------------------------------------------------- splits


def test_split_subjects_is_deterministic_and_complete():
    subjects = [f"s{i:02d}" for i in range(20)]
    a = split_subjects(subjects, (0.8, 0.1, 0.1), seed=3)
    assert a == split_subjects(list(reversed(subjects)), (0.8, 0.1, 0.1), seed=3)
    assert sorted(a) == subjects
    counts = {s: list(a.values()).count(s) for s in ("train", "validate", "test")}
    assert counts == {"train": 16, "validate": 2, "test": 2}
    assert a != split_subjects(subjects, (0.8, 0.1, 0.1), seed=4)
    small = split_subjects(["a", "b", "c"], (0.8, 0.1, 0.1), seed=0)
    assert sorted(small.values()) == ["test", "train", "validate"]
    with pytest.raises(ConfigError):
        split_subjects(subjects, (0.5, 0.1, 0.1), seed=0)


def ixi_tree(root: Path, n: int = 10, noisy: bool = False) -> list[str]:
    """IXI-like tree: t1/<subj>_T1.nii.gz and seg/<subj>_T1_DLMUSE.nii.gz, RAS stored as PSR."""
    subjects = [f"IXI{100 + i:03d}-HH-{2000 + i}" for i in range(n)]
    affine = np.array([[0, 0, 2, -10], [-2, 0, 0, 20], [0, 2, 0, -30], [0, 0, 0, 1]], float)
    for subj in subjects:
        ras = ras_head()
        if noisy:
            ras = ras + RNG.uniform(5, 20, ras.shape).astype(np.float32)
        # stored (P, S, R): voxel i -> y = -(i), voxel j -> z, voxel k -> x
        stored = ras.transpose(1, 2, 0)[::-1].copy()
        mask = (ras_head() > 0).astype(np.uint8).transpose(1, 2, 0)[::-1].copy() * 7
        save_nifti(root / "t1" / f"{subj}_T1.nii.gz", stored, affine)
        save_nifti(root / "seg" / f"{subj}_T1_DLMUSE.nii.gz", mask, affine)
    return subjects


def test_volume_tree_splits_by_subject_and_never_loads_masks(tmp_path):
    subjects = ixi_tree(tmp_path)
    # a second scan of one subject must land in the same split
    second = tmp_path / "t1" / f"{subjects[0]}_T2.nii.gz"
    second.write_bytes((tmp_path / "t1" / f"{subjects[0]}_T1.nii.gz").read_bytes())
    opts = DataOptions(size=16, split_fractions=(0.6, 0.2, 0.2), split_seed=1)
    splits = load_volume_tree(tmp_path, opts)
    assert set(splits) == {"train", "validate", "test"}
    seen = [set(s.subjects) for s in splits.values()]
    assert sum(len(x) for x in seen) == len(subjects) == len(set().union(*seen))
    for s in splits.values():
        assert all("/t1/" in src and "DLMUSE" not in src for src in s.sources)
        assert s.images.dtype == np.uint8 and s.images.shape[1:] == (16, 16)
        assert np.isnan(s.ages).all()
    total = sum(len(s) for s in splits.values())
    assert total == 11 * 6  # 11 volumes x 6 axial slices with tissue
    again = load_volume_tree(tmp_path, opts)
    assert {k: v.subjects for k, v in again.items()} == {k: v.subjects for k, v in splits.items()}


def test_auto_masks_zero_the_background(tmp_path):
    ixi_tree(tmp_path, n=3, noisy=True)
    plain = load_volume_tree(tmp_path, DataOptions(size=16, mask=None))
    masked = load_volume_tree(tmp_path, DataOptions(size=16, mask="auto"))
    all_plain = np.concatenate([s.images for s in plain.values()])
    all_masked = np.concatenate([s.images for s in masked.values()])
    assert all_plain[:, 0, :].mean() > 2  # noisy background survives without a mask
    assert all_masked.shape[0] == 3 * 6  # slices chosen by mask area
    assert all_masked[:, :2, :].max() == 0 and all_masked[:, :, :2].max() == 0


def test_explicit_mask_folder_requires_a_mask_per_volume(tmp_path):
    ixi_tree(tmp_path, n=3)
    masks = tmp_path / "seg"
    splits = load_volume_tree(tmp_path, DataOptions(size=16, mask=str(masks)))
    assert sum(len(s) for s in splits.values()) == 18
    sorted(masks.iterdir())[0].unlink()
    with pytest.raises(DataError, match="no mask"):
        load_volume_tree(tmp_path, DataOptions(size=16, mask=str(masks)))
    # three subjects, one per split: skipping the bad one would leave its split empty
    with pytest.raises(DataError, match="split '.*' would be empty"):
        load_volume_tree(tmp_path, DataOptions(size=16, mask=str(masks), skip_bad=True))


def write_participants(root: Path, rows: list[dict]) -> None:
    with open(root / "participants.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_participants_split_column_and_ages(tmp_path):
    subjects = ixi_tree(tmp_path, n=4)
    plan = ["train", "train", "val", "test"]
    rows = [
        {"subject": s, "age": 20 + i, "split": p}
        for i, (s, p) in enumerate(zip(subjects, plan, strict=True))
    ]
    write_participants(tmp_path, rows)
    splits = load_volume_tree(tmp_path, DataOptions(size=16))
    assert set(splits["train"].subjects) == set(subjects[:2])
    assert set(splits["validate"].subjects) == {subjects[2]}
    np.testing.assert_array_equal(np.unique(splits["test"].ages), [23.0])
    write_participants(tmp_path, rows[:3])  # the test subject has no row
    with pytest.raises(DataError, match="no row"):
        load_volume_tree(tmp_path, DataOptions(size=16))
    splits = load_volume_tree(tmp_path, DataOptions(size=16, skip_bad=True))
    assert "test" not in splits and any(subjects[3] in line for line in splits["train"].skipped)


def test_participants_without_split_give_ages_only(tmp_path):
    subjects = ixi_tree(tmp_path, n=5)
    write_participants(
        tmp_path,
        [{"subject": s, "age": "NA" if i == 0 else 30 + i} for i, s in enumerate(subjects)],
    )
    splits = load_volume_tree(tmp_path, DataOptions(size=16, split_fractions=(0.6, 0.2, 0.2)))
    ages = {
        subj: age for s in splits.values() for subj, age in zip(s.subjects, s.ages, strict=True)
    }
    assert np.isnan(ages[subjects[0]]) and ages[subjects[4]] == 34.0


def test_bad_volume_raises_or_is_skipped(tmp_path):
    subjects = ixi_tree(tmp_path, n=4)
    bad = tmp_path / "t1" / "IXI999-HH-9999_T1.nii.gz"
    data = ras_head()
    data[5, 5, 5] = np.nan
    save_nifti(bad, data)
    with pytest.raises(DataError, match="NaN") as err:
        load_volume_tree(tmp_path, DataOptions(size=16))
    assert Path(err.value.path).resolve() == bad.resolve()
    # 5 subjects: each of validate and test gets one, so the skip would empty a split
    bad_id = subject_id(bad)
    opts = DataOptions(size=16, skip_bad=True)
    home = split_subjects([*subjects, bad_id], opts.split_fractions, opts.split_seed)[bad_id]
    assert home != "train"
    with pytest.raises(DataError, match=f"split '{home}' would be empty") as err:
        load_volume_tree(tmp_path, opts)
    assert bad.name in str(err.value) and "NaN" in str(err.value)
    # with two subjects per split the skip is listed in the bad volume's own split
    opts = DataOptions(size=16, skip_bad=True, split_fractions=(0.2, 0.4, 0.4))
    home = split_subjects([*subjects, bad_id], opts.split_fractions, opts.split_seed)[bad_id]
    splits = load_volume_tree(tmp_path, opts)
    skipped = {name: sp.skipped for name, sp in splits.items() if sp.skipped}
    assert list(skipped) == [home] and len(skipped[home]) == 1
    assert bad.name in skipped[home][0] and "NaN" in skipped[home][0]
    assert all("IXI999" not in s for sp in splits.values() for s in sp.subjects)


def test_analyze_tree_through_the_loader(tmp_path):
    for i in range(3):
        folder = tmp_path / f"OAS1_000{i}_MR1" / "PROCESSED" / "MPRAGE" / "T88_111"
        folder.mkdir(parents=True)
        img = nib.AnalyzeImage((ras_head() * 10).astype(np.int16)[..., None], np.eye(4))
        nib.save(img, str(folder / f"OAS1_000{i}_MR1_mpr_n4_anon_111_t88_masked_gfc.img"))
    splits = load_splits(tmp_path, DataOptions(size=16), cache=False)
    assert sorted(sp for s in splits.values() for sp in s.subjects[:1]) == [
        "OAS1_0000",
        "OAS1_0001",
        "OAS1_0002",
    ]
    assert all(".img#" in src for s in splits.values() for src in s.sources)


def test_empty_or_mask_only_tree_is_an_error(tmp_path):
    save_nifti(tmp_path / "seg" / "x_seg.nii.gz", np.ones((4, 4, 4), np.uint8))
    with pytest.raises(DataError, match="no NIfTI/Analyze volumes"):
        load_volume_tree(tmp_path, DataOptions(size=16))
    with pytest.raises(ConfigError):
        load_volume_tree(tmp_path, DataOptions(size=16, axis="oblique"))


def test_read_volume_rejects_other_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match="not a NIfTI"):
        read_volume(tmp_path / "a.png")
    assert volumes.volume_stem(Path("a.NII.GZ")) == "a"
