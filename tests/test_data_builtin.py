"""The built-in MNI152 demo data: offline, real slices, deterministic position splits."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from oasisvq.data.builtin import load_builtin, split_of
from oasisvq.data.loader import DataOptions


@pytest.fixture(scope="module")
def splits():
    """Loaded once with every network connection refused."""
    mp = pytest.MonkeyPatch()

    def refuse(*args, **kwargs):
        raise AssertionError("the built-in data set touched the network")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket.socket, "connect_ex", refuse)
    mp.setattr(socket, "create_connection", refuse)
    try:
        yield load_builtin(DataOptions(size=32))
    finally:
        mp.undo()


def _index(source: str) -> int:
    return int(source.rsplit("#", 1)[1])


def test_three_nonempty_disjoint_splits(splits):
    assert list(splits) == ["train", "validate", "test"]
    sources = [set(s.sources) for s in splits.values()]
    assert all(sources) and sum(len(x) for x in sources) == len(set().union(*sources))
    n = sum(len(x) for x in sources)
    assert 40 < n < 189  # axial slices with a whole brain out of 189
    # only slices whose brain covers most of the largest one's (builtin.MIN_AREA): the
    # thin caps above and below the brain are left out
    areas = np.concatenate([(np.asarray(s.images) > 0).sum(axis=(1, 2)) for s in splits.values()])
    assert areas.min() >= 0.5 * areas.max()
    assert len(splits["validate"]) == len(range(0, n, 10))
    assert len(splits["train"]) > 7 * len(splits["test"])


def test_split_by_position_pattern(splits):
    every = sorted(_index(src) for s in splits.values() for src in s.sources)
    assert every == list(range(every[0], every[0] + len(every)))  # contiguous brain slices
    val = [_index(src) - every[0] for src in splits["validate"].sources]
    test = [_index(src) - every[0] for src in splits["test"].sources]
    assert all(v % 10 == 0 for v in val) and all(t % 10 == 1 for t in test)
    np.testing.assert_array_equal(
        split_of(np.arange(12)), ["validate", "test"] + ["train"] * 8 + ["validate", "test"]
    )


def test_images_are_real_masked_brain_slices(splits):
    for s in splits.values():
        assert s.images.dtype == np.uint8 and s.images.shape[1:] == (32, 32)
        assert set(s.subjects) == {"MNI152"}
        assert ((s.positions >= 0) & (s.positions <= 1)).all()
        assert np.isnan(s.ages).all() and (s.classes == -1).all()
    train = splits["train"]
    mid = train.images[np.argmin(np.abs(train.positions - 0.5))]
    assert mid[0].max() == 0 and mid[:, 0].max() == 0  # masked: the corners are background
    assert (mid > 0).mean() > 0.3 and mid.max() > 200
    # an axial slice is roughly left-right symmetric but not front-back symmetric
    lr = np.abs(mid.astype(int) - mid[:, ::-1]).mean()
    ap = np.abs(mid.astype(int) - mid[::-1, :]).mean()
    assert lr < ap


def test_deterministic(splits):
    again = load_builtin(DataOptions(size=32))
    for name, s in splits.items():
        np.testing.assert_array_equal(s.images, again[name].images)
        assert s.sources == again[name].sources


def test_demo_on_the_built_in_brain_trains_with_small_batches(tmp_path):
    # about a hundred training slices: the presets' batch of 32 gives too few steps
    from oasisvq.pipeline import DemoSettings, run_demo
    from oasisvq.runs import checkpoint

    settings = DemoSettings(epochs=1, prior=None)
    summary = run_demo(tmp_path / "demo", settings=settings)
    saved = checkpoint.read_config(tmp_path / "demo")
    assert saved["train"]["batch_size"] == settings.builtin_batch
    assert saved["model"]["name"] == settings.preset and summary["n_images"] > 0
    assert (tmp_path / "demo" / f"eval-{summary['split']}" / "reconstructions.png").exists()
