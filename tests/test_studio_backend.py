"""The Studio's backend (no Gradio, no browser) on a tiny run, and ``oasisvq studio``'s
checks before it starts a server."""

from __future__ import annotations

import io
import json
import math
import sys
import types
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from studio_fixture import make_run

from oasisvq import cli, metrics
from oasisvq.data.images import read_gray8, to_square
from oasisvq.data.loader import DataOptions, load_splits
from oasisvq.errors import ConfigError, DataError
from oasisvq.studio import backend as B

SIZE, K, GRID = 128, 8, 8


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("studio")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OASISVQ_CACHE", str(base / "cache"))
        yield make_run(base)


@pytest.fixture
def st(run: Path, monkeypatch: pytest.MonkeyPatch) -> B.Studio:
    monkeypatch.setenv("OASISVQ_CACHE", str(run.parent / "cache"))
    return B.open_run(run)


def test_open_run_and_overview(st: B.Studio, run: Path) -> None:
    o = B.overview(st)
    assert (o["grid"], o["codebook_size"], o["image_size"]) == (GRID, K, SIZE)
    assert sorted(o["priors"]) == ["tf-class", "transformer"]
    with pytest.raises(ConfigError, match="no such run"):
        B.open_run(run / "nope")


def test_browse_the_data(st: B.Studio, run: Path) -> None:
    val = load_splits(run.parent / "data", DataOptions(size=SIZE))["validate"]
    assert B.browse(st, "validate")["classes"] == ["A", "B"]
    idx = B.find_images(st, "validate", "B")
    assert len(idx) == 6 and (val.classes[idx] == 1).all()
    image, label = B.data_image(st, "validate", int(idx[2]))
    assert np.array_equal(image, val.images[idx[2]]) and "B" in label
    assert len(B.find_images(st, "validate", subject="nobody")) == 0
    with pytest.raises(DataError, match="no split 'test'"):
        B.find_images(st, "test")
    with pytest.raises(ConfigError):
        B.data_image(st, "validate", 99)


def test_reconstruct_measures_like_evaluate(st: B.Studio) -> None:
    image, _ = B.data_image(st, "validate", 0)
    r = B.reconstruct(st, image)
    x = torch.from_numpy(image).float()[None] / 255
    assert np.array_equal(r.codes, st.model.encode(x)[0].numpy())
    assert np.allclose(r.recon, st.model.decode(r.codes[None])[0].numpy(), atol=1e-6)
    a, b = torch.from_numpy(r.original)[None, None], torch.from_numpy(r.recon)[None, None]
    assert r.ssim == pytest.approx(float(metrics.ssim(b, a)[0]), abs=1e-6)
    mse = float(np.mean((r.recon - image / 255.0) ** 2))
    assert r.psnr == pytest.approx(10 * math.log10(1 / mse), abs=1e-3)
    assert np.allclose(r.diff, r.recon - image / 255.0, atol=1e-6)


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_uploads_are_decoded_with_the_readers_checks(st: B.Studio, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    small = _png(tmp_path / "slice.png", rng.integers(0, 255, (90, 70), dtype=np.uint8))
    up = B.read_upload(st, small)
    assert up.images.shape == (1, SIZE, SIZE) and np.isnan(up.positions).all()
    assert np.array_equal(up.images[0], to_square(read_gray8(small), SIZE))
    colour = _png(tmp_path / "colour.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    huge = tmp_path / "huge.png"  # a few kB that claims 100 M pixels
    Image.new("1", (10000, 10000)).save(huge)
    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.truncate(B.MAX_UPLOAD_BYTES + 1)
    for path, reason in [
        (colour, "colour"),
        (corrupt, "unreadable"),
        (text, "not a PNG"),
        (huge, "10000x10000"),
        (big, "20 MB"),
    ]:
        with pytest.raises(DataError, match=reason) as exc:
            B.read_upload(st, path, name="their-file")
        assert str(exc.value).startswith("their-file: ")  # the name the user knows


def test_volume_uploads_become_slices(st: B.Studio, tmp_path: Path) -> None:
    zz, yy, xx = np.mgrid[-1:1:24j, -1:1:30j, -1:1:26j]
    vol = (xx**2 + yy**2 + zz**2 < 0.7).astype(np.float32) * (1 + xx)
    path = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    up = B.read_upload(st, path)
    assert up.images.shape[1:] == (SIZE, SIZE) and len(up.images) > 5
    assert up.positions[0] == 0 and up.positions[-1] == 1
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="broken.nii.gz"):
        B.read_upload(st, broken)


def test_codes_usage_tiles_and_examples(st: B.Studio) -> None:
    images, codes = B.usage_codes(st)
    assert np.array_equal(codes, B.encode(st, images))
    usage = B.code_usage(st)
    assert usage.shape == (K,) and usage.sum() == codes.size
    assert np.array_equal(usage, np.bincount(codes.ravel(), minlength=K))
    tiles = B.code_tiles(st)
    assert tiles.shape == (K, SIZE, SIZE)
    assert np.allclose(tiles[3], B.decode(st, np.full((GRID, GRID), 3)), atol=1e-6)
    k = int(np.argmax(usage))
    shown, masks = B.code_examples(st, k, n=3)
    assert len(shown) == 3 and masks.any(axis=(1, 2)).all()
    assert np.array_equal(masks[0], B.encode(st, shown[0]) == k)
    with pytest.raises(ConfigError, match="outside"):
        B.code_examples(st, K)


def test_sample_with_settings_seed_and_conditions(st: B.Studio) -> None:
    s = B.sample(st, 5, "transformer", seed=3, temperature=0.9, top_k=4)
    assert s.images.shape == (5, SIZE, SIZE) and s.codes.shape == (5, GRID, GRID)
    assert 0 <= s.images.min() and s.images.max() <= 1
    assert np.allclose(s.images, B.decode(st, s.codes), atol=1e-5)
    assert np.array_equal(
        B.sample(st, 5, "transformer", seed=3, temperature=0.9, top_k=4).codes, s.codes
    )
    assert not np.array_equal(B.sample(st, 5, "transformer", seed=4).codes, s.codes)
    assert s.settings["prior"] == "transformer" and s.settings["top_k"] == 4
    info = B.prior_info(st, "tf-class")
    assert info.conditions == ("class",) and info.class_names == ("A", "B") and info.guidance
    assert not B.prior_info(st, "transformer").guidance
    c = B.sample(st, 2, "tf-class", {"class": "B", "age": None}, guidance=2.0)
    assert c.settings["conditions"] == {"class": "B"} and c.settings["guidance"] == 2.0
    for bad in [
        dict(n=0),
        dict(n=B.MAX_SAMPLES + 1),
        dict(prior="tf-class", conditions={"class": "Z"}),
        dict(prior="tf-class", conditions={"sex": "F"}),
        dict(prior="tf-class", conditions={"weight": 3}),
        dict(prior="transformer", conditions={"class": "A"}),
        dict(prior="transformer", guidance=2.0),
        dict(prior="nope"),
    ]:
        with pytest.raises(ConfigError):
            B.sample(st, **{"n": 2, **bad})


def test_export_zip_holds_images_codes_and_settings(st: B.Studio, tmp_path: Path) -> None:
    s = B.sample(st, 3, "transformer", seed=1)
    path = B.export_zip(s, tmp_path / "out" / "samples.zip")
    with zipfile.ZipFile(path) as z:
        names = sorted(z.namelist())
        assert names == [
            "codes.npy",
            "images/sample_000.png",
            "images/sample_001.png",
            "images/sample_002.png",
            "settings.json",
        ]
        assert np.array_equal(np.load(io.BytesIO(z.read("codes.npy"))), s.codes)
        png = np.asarray(Image.open(io.BytesIO(z.read("images/sample_001.png"))))
        assert np.abs(png.astype(int) - np.round(s.images[1] * 255)).max() <= 1
        assert json.loads(z.read("settings.json"))["seed"] == 1


def test_nearest_training_image(st: B.Studio, run: Path) -> None:
    train = load_splits(run.parent / "data", DataOptions(size=SIZE))["train"]
    idx, score, image = B.nearest_training(st, train.images[7])
    assert idx == 7 and score == pytest.approx(1.0, abs=1e-5)
    assert np.array_equal(image, train.images[7])


def test_set_cells(st: B.Studio) -> None:
    codes = np.zeros((GRID, GRID), np.int64)
    mask = np.zeros((GRID, GRID), bool)
    mask[2:4, 5] = True
    out = B.set_cells(st, codes, mask, 6)
    assert (out[mask] == 6).all() and (out[~mask] == 0).all() and (codes == 0).all()
    with pytest.raises(ConfigError):
        B.set_cells(st, codes, mask, K)


def test_resample_keeps_the_rest_and_draws_in_raster_order(st: B.Studio) -> None:
    codes = B.sample(st, 1, "tf-class", seed=0).codes[0]
    mask = np.zeros((GRID, GRID), bool)
    mask[3:6, 2:7] = True
    out = B.resample_cells(st, codes, mask, "tf-class", {"class": "A"}, temperature=0)
    assert np.array_equal(out[~mask], codes[~mask])
    # temperature 0: every redrawn cell is the prior's most likely code given all cells
    # before it, which a raster-order draw gives (later cells never inform earlier ones)
    prior = B._prior(st, "tf-class")
    cond = {
        "class": torch.tensor([0]),
        "position": torch.tensor([math.nan]),
        "age": torch.tensor([math.nan]),
    }
    with torch.no_grad():
        best = prior(torch.from_numpy(out)[None], cond)[0].argmax(-1).numpy()
    assert np.array_equal(out[mask], best[mask])
    again = B.resample_cells(st, codes, mask, "tf-class", seed=5)
    assert np.array_equal(again, B.resample_cells(st, codes, mask, "tf-class", seed=5))


def test_resample_uses_a_masked_priors_inpaint(
    st: B.Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    prior = B._prior(st, "transformer")
    seen = {}

    def inpaint(codes, mask, cond=None, options=None, generator=None):
        seen.update(mask=mask.clone(), options=options)
        return torch.where(mask, torch.full_like(codes, 7), codes)

    monkeypatch.setattr(prior, "inpaint", inpaint, raising=False)
    mask = np.eye(GRID, dtype=bool)
    out = B.resample_cells(st, np.zeros((GRID, GRID)), mask, "transformer", top_k=3)
    assert (out[mask] == 7).all() and (out[~mask] == 0).all()
    assert seen["mask"].shape == (1, GRID, GRID) and seen["options"].top_k == 3


def test_surprise_is_the_per_cell_nll(st: B.Studio) -> None:
    image, _ = B.data_image(st, "validate", 1)
    codes = B.encode(st, image)
    s = B.surprise(st, codes, "transformer")
    prior = B._prior(st, "transformer")
    with torch.no_grad():
        nll = float(prior.nll(torch.from_numpy(codes)[None])[0]) / math.log(2)
    assert s.bits.shape == (GRID, GRID) and (s.bits >= 0).all()
    assert (
        s.total_bits == pytest.approx(nll, rel=1e-4) == pytest.approx(float(s.bits.sum()), rel=1e-4)
    )
    cell = SIZE // GRID
    assert s.heat.shape == (SIZE, SIZE)
    assert np.allclose(s.heat[cell * 2 : cell * 3, cell * 5 : cell * 6], s.bits[2, 5])
    assert s.uniform_bits == pytest.approx(GRID * GRID * math.log2(K))


def test_history_and_evaluations(st: B.Studio, run: Path) -> None:
    history = B.training_history(st)
    assert set(history) == {"prior transformer", "prior tf-class"}  # this run has no history.csv
    assert [r["epoch"] for r in history["prior transformer"]] == [1.0]
    assert history["prior transformer"][0]["val_loss_bits_per_image"] > 0
    found = B.evaluations(st)
    assert found["eval-validate"]["n_images"] == 12
    (run / "eval-broken").mkdir()
    (run / "eval-broken" / "metrics.json").write_text("{not json")
    assert "damaged" in B.evaluations(st)["eval-broken"]["error"]


# --------------------------------------------------------------------------- the command


def test_studio_without_gradio_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert cli.main(["studio", "some/run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install -e '.[studio]'" in err and len(err.splitlines()) == 1


def test_studio_warns_when_not_on_loopback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = []
    fake = types.ModuleType("oasisvq.studio.app")
    fake.serve = lambda *args: calls.append(args)
    monkeypatch.setitem(sys.modules, "oasisvq.studio.app", fake)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    assert cli.main(["studio", "r", "--port", "9999"]) == 0
    assert capsys.readouterr().err == ""
    assert cli.main(["studio", "r", "--host", "0.0.0.0"]) == 0
    assert "no authentication" in capsys.readouterr().err
    assert calls == [("r", None, "127.0.0.1", 9999, "cpu"), ("r", None, "0.0.0.0", None, "cpu")]


def test_an_upload_box_gives_one_nifti_or_an_analyze_pair_side_by_side(tmp_path: Path) -> None:
    from oasisvq.studio.page import Page, upload_volume

    page = Page(None, tmp_path / "page", None, None, None, None)
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    boxes = {}  # Gradio keeps every uploaded file in a folder of its own
    for name, image in (
        ("scan.nii.gz", nib.Nifti1Image(data, affine)),
        ("oasis.hdr", nib.AnalyzeImage(data, affine)),
    ):
        folder = tmp_path / "page" / f"box-{name}"
        folder.mkdir(parents=True)
        nib.save(image, folder / name)
        boxes[name] = sorted(str(p) for p in folder.iterdir())
    assert len(boxes["oasis.hdr"]) == 2  # oasis.hdr and oasis.img
    hdr, img = boxes["oasis.hdr"]
    elsewhere = tmp_path / "page" / "box-img"
    elsewhere.mkdir()
    img = str(Path(img).rename(elsewhere / "oasis.img"))
    assert upload_volume(page, None) is None and upload_volume(page, []) is None
    assert upload_volume(page, boxes["scan.nii.gz"]) == (boxes["scan.nii.gz"][0], "scan.nii.gz")
    path, name = upload_volume(page, [img, hdr])
    assert name == "oasis.hdr" and Path(path).parent != Path(hdr).parent
    np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj), data)
    # a box keeps every upload: the newest volume counts
    nifti = boxes["scan.nii.gz"][0]
    assert upload_volume(page, [hdr, img, nifti]) == (nifti, "scan.nii.gz")
    assert upload_volume(page, [nifti, hdr, img])[1] == "oasis.hdr"
    for bad in ([img], [hdr], [nifti, hdr], [img, nifti, img]):
        with pytest.raises(DataError, match="an Analyze .hdr with its .img") as err:
            upload_volume(page, bad)
        assert "\n" not in str(err.value)
    (tmp_path / "oasis.img").write_bytes(Path(img).read_bytes())  # outside the page's folder
    with pytest.raises(DataError, match="page's own folder"):
        upload_volume(page, [str(tmp_path / "oasis.img"), hdr])
