"""The 3D age/sex network: it learns both from volumes, it is cached without pickle, and
the conditioning measures say what they should."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from oasisvq.errors import ConfigError, DataError
from oasisvq.evaluate import volume_net as vn
from oasisvq.evaluate.features import frechet_distance
from oasisvq.evaluate.volume_net import (
    Predictions,
    VolumeArrays,
    VolumeNet,
    conditioning_fidelity,
    data_key,
    load_volume_net,
    predict,
    real_ceiling,
    settle_norm_statistics,
    train_volume_net,
    volume_net,
)

SIZE = 24
# small enough for a test: full resolution, three levels
TINY = dict(epochs=15, batch_size=8, lr=3e-3, channels=(8, 16, 32), pool=1, shift=1)


def _volumes(n: int, seed: int) -> VolumeArrays:
    """Heads whose size says the sex (male larger) and whose dark central blob (the
    ventricles) grows with age, 20 to 90 years; noise on top."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 90, n).astype(np.float32)
    sexes = rng.integers(0, 2, n).astype(np.int8)
    grid = np.stack(np.mgrid[0:SIZE, 0:SIZE, 0:SIZE], -1) - (SIZE - 1) / 2
    out = []
    for age, sex in zip(ages, sexes, strict=True):
        r = np.linalg.norm(grid - rng.uniform(-1, 1, 3), axis=-1)
        head = 7.5 + 2.5 * sex + rng.uniform(-0.3, 0.3)
        blob = 1.5 + 4.5 * (age - 20) / 70
        v = 0.75 * (r < head) * (r > blob) + rng.normal(0, 0.05, r.shape) * (r < head)
        out.append(np.clip(v * 255, 0, 255).astype(np.uint8))
    return VolumeArrays(np.stack(out), ages, sexes)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[VolumeNet, Path]:
    cache = tmp_path_factory.mktemp("cache")
    train, val = _volumes(96, 0), _volumes(24, 1)
    torch.set_num_threads(1)
    return volume_net(train, val, cache, data_key(train, val, TINY), **TINY), cache


def test_learns_age_and_sex_of_held_out_volumes(trained: tuple[VolumeNet, Path]) -> None:
    net, _ = trained
    test = _volumes(48, 2)
    pred = predict(net, test.volumes)
    assert pred.ages.shape == (48,) and pred.p_male.shape == (48,)
    assert pred.features.shape == (48, net.feature_dim) == (48, 32)
    found = conditioning_fidelity(test.ages, test.sexes, pred)
    assert found["age_correlation"] > 0.8, found
    assert found["age_mae"] < 8, found  # the ages span 70 years: the mean is 17 off
    assert found["sex_accuracy"] > 0.9, found
    ceiling = real_ceiling(net, test)
    assert set(ceiling) == {"age_mae_real", "age_correlation_real", "sex_accuracy_real"}
    assert ceiling["age_mae_real"] == pytest.approx(found["age_mae"])
    # the features tell the sets apart: old males are far from young females
    old_m = (test.ages > 55) & (test.sexes == 1)
    young_f = (test.ages < 55) & (test.sexes == 0)
    f = pred.features
    halves = frechet_distance(f[::2], f[1::2])
    assert frechet_distance(f[old_m], f[young_f]) > halves


def test_features_are_deterministic_in_eval_mode(trained: tuple[VolumeNet, Path]) -> None:
    net, _ = trained
    assert not net.training
    vols = _volumes(6, 3).volumes
    a, b = predict(net, vols), predict(net, vols, batch_size=1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # uint8 and the same volumes as float in [0, 1] are the same input
    c = predict(net, vols.astype(np.float32) / 255)
    np.testing.assert_allclose(a.features, c.features, rtol=1e-5, atol=1e-6)


def test_cache_reloads_without_training_and_without_pickle(
    trained: tuple[VolumeNet, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    net, cache = trained
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    meta = json.loads((folder / "volume_net.json").read_text())
    assert meta["options"]["epochs"] == TINY["epochs"] and 1 <= meta["kept_epoch"] <= 15
    assert set(meta["validate"]) == {"age_mae_real", "age_correlation_real", "sex_accuracy_real"}
    for path in folder.rglob("*"):
        if path.is_file():
            assert path.suffix not in (".pt", ".pth", ".pkl", ".pickle"), path
            assert not path.read_bytes().startswith(b"\x80"), path  # pickle's opening byte
    weights = folder / "best" / "model.safetensors"
    header = int.from_bytes(weights.read_bytes()[:8], "little")  # safetensors: JSON header
    assert "age_mean" in json.loads(weights.read_bytes()[8 : 8 + header])

    def refuse(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(vn, "train_task", refuse)
    train, val = _volumes(96, 0), _volumes(24, 1)
    again = volume_net(train, val, cache, folder.name, **TINY)
    assert not again.training
    for (k, a), b in zip(net.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert torch.equal(load_volume_net(folder).age_mean, net.age_mean)
    # another number of epochs is another network
    with pytest.raises(AssertionError, match="trained again"):
        volume_net(train, val, cache, folder.name, **{**TINY, "epochs": 2})


def test_keeps_the_best_validate_epoch_and_its_age_statistics(tmp_path: Path) -> None:
    train, val = _volumes(16, 4), _volumes(8, 5)
    small = {**TINY, "epochs": 3}
    net = train_volume_net(train, val, tmp_path, **small)
    rows = json.loads((tmp_path / "history.json").read_text())
    maes = [r["val_age_mae"] for r in rows]
    kept = json.loads((tmp_path / "volume_net.json").read_text())["kept_epoch"]
    assert kept == 1 + int(np.argmin(maes))
    assert real_ceiling(net, val)["age_mae_real"] == pytest.approx(min(maes), rel=1e-4)
    assert float(net.age_mean) == pytest.approx(float(train.ages.mean()), rel=1e-5)
    assert float(net.age_std) == pytest.approx(float(train.ages.std()), rel=1e-4)


def test_an_interrupted_training_continues_to_the_same_network(tmp_path: Path) -> None:
    train, val = _volumes(16, 4), _volumes(8, 5)
    # validate ages all at the training mean: the untrained first epoch is the best, so
    # the resumed training must keep the epoch kept before it stopped
    val = VolumeArrays(val.volumes, np.full(8, train.ages.mean(), np.float32), val.sexes)
    small = {**TINY, "epochs": 3}
    whole = train_volume_net(train, val, tmp_path / "whole", **small)
    cut = tmp_path / "cut"
    train_volume_net(train, val, cut, **small)
    # as if stopped after epoch 2: its checkpoint is the newest, nothing says done
    shutil.rmtree(cut / "checkpoints" / "epoch-0003")
    (cut / "volume_net.json").unlink()
    resumed = train_volume_net(train, val, cut, **small)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    kept = [
        json.loads((p / "volume_net.json").read_text())["kept_epoch"]
        for p in (tmp_path / "whole", cut)
    ]
    assert kept == [1, 1]
    with pytest.raises(ConfigError, match="other options"):
        train_volume_net(train, val, cut, **{**small, "lr": 1e-3})


def test_initial_weights_do_not_depend_on_what_ran_before(tmp_path: Path) -> None:
    train = _volumes(8, 6)
    nets = []
    for i in range(2):
        torch.manual_seed(100 + i)
        torch.rand(5)
        nets.append(train_volume_net(train, None, tmp_path / str(i), **{**TINY, "epochs": 1}))
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_settled_norm_statistics_are_those_of_the_volumes() -> None:
    torch.manual_seed(0)
    net = VolumeNet(channels=(4, 8), pool=1)
    vols = (torch.rand(6, 10, 10, 10) * 255).to(torch.uint8).numpy()
    stem, norm = net.body[0], net.body[1]
    norm.running_mean.fill_(5.0)  # stale, as after fast-moving weights
    settle_norm_statistics(net, vols, batch_size=6)
    assert not net.training and norm.momentum == 0.1
    with torch.no_grad():
        out = stem(torch.from_numpy(vols).float()[:, None] / 255 - 0.5)
    torch.testing.assert_close(norm.running_mean, out.mean((0, 2, 3, 4)))
    # two batches: the average of their statistics
    settle_norm_statistics(net, vols, batch_size=3)
    halves = (out[:3].mean((0, 2, 3, 4)) + out[3:].mean((0, 2, 3, 4))) / 2
    torch.testing.assert_close(norm.running_mean, halves)


def _pred(ages: list[float], p_male: list[float]) -> Predictions:
    return Predictions(np.array(ages), np.array(p_male), np.zeros((len(ages), 4)))


def test_conditioning_fidelity_of_perfect_and_of_constant_predictions() -> None:
    ages, sexes = np.array([30.0, 50.0, 70.0, 90.0]), np.array([0, 1, 1, 0])
    perfect = conditioning_fidelity(ages, sexes, _pred([30, 50, 70, 90], [0.1, 0.9, 0.8, 0.2]))
    assert perfect == {"age_correlation": pytest.approx(1.0), "age_mae": 0.0, "sex_accuracy": 1.0}
    constant = conditioning_fidelity(ages, sexes, _pred([60] * 4, [0.7] * 4))
    assert math.isnan(constant["age_correlation"])  # documented: no spread, no correlation
    assert constant["age_mae"] == pytest.approx(20.0) and constant["sex_accuracy"] == 0.5
    reversed_ = conditioning_fidelity(ages, sexes, _pred([90, 70, 50, 30], [0.9, 0.1, 0.2, 0.6]))
    assert reversed_["age_correlation"] == pytest.approx(-1.0) and reversed_["sex_accuracy"] == 0
    # all requested at one age (a sample set "at age 80"): r is NaN, the MAE still counts
    one_age = conditioning_fidelity(np.full(4, 80.0), sexes, _pred([70, 80, 90, 80], [0] * 4))
    assert math.isnan(one_age["age_correlation"]) and one_age["age_mae"] == pytest.approx(5.0)


def test_conditioning_fidelity_skips_unknowns() -> None:
    ages = np.array([30.0, np.nan, 70.0, 40.0])
    sexes = np.array([-1, 1, 0, -1])
    found = conditioning_fidelity(ages, sexes, _pred([35, 10, 75, 40], [0.9, 0.9, 0.9, 0.1]))
    assert found["age_correlation"] == pytest.approx(np.corrcoef([30, 70, 40], [35, 75, 40])[0, 1])
    assert found["age_mae"] == pytest.approx(10 / 3)  # the NaN age's wild 10 is skipped
    assert found["sex_accuracy"] == 0.5
    nothing = conditioning_fidelity(np.full(2, np.nan), np.full(2, -1), _pred([1, 2], [0, 1]))
    assert all(math.isnan(v) for v in nothing.values())
    with pytest.raises(DataError, match="do not match"):
        conditioning_fidelity(ages[:3], sexes[:3], _pred([1, 2], [0, 1]))


def test_refuses_bad_volumes(trained: tuple[VolumeNet, Path], tmp_path: Path) -> None:
    net, _ = trained
    with pytest.raises(DataError, match="trained on"):
        predict(net, np.zeros((2, SIZE, SIZE, SIZE + 2), np.uint8))
    with pytest.raises(DataError, match="expected"):
        predict(net, np.zeros((2, SIZE, SIZE), np.uint8))
    bad = VolumeArrays(np.zeros((3, 8, 8, 8), np.uint8), np.zeros(2, np.float32), np.zeros(3))
    with pytest.raises(DataError, match="training volumes"):
        train_volume_net(bad, None, tmp_path)
