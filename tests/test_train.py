"""Training engine, checkpoints, resume and the train/evaluate/reconstruct CLI."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import oasisvq
from oasisvq.cli import main
from oasisvq.runs import checkpoint

ARGS = ["--preset", "seed", "--size", "32", "--batch-size", "8", "--amp", "off", "--seed", "3"]


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), *ARGS, *extra])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint.latest(run) / "model.safetensors"))


def test_train_writes_history_checkpoint_and_plots(tiny_tree: Path, tmp_path: Path):
    run = tmp_path / "run"
    assert _train(tiny_tree, run, "--epochs", "2") == 0
    rows = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in (
        "train_loss",
        "train_codes_used",
        "train_perplexity",
        "val_ssim",
        "val_psnr",
        "val_codes_used",
    ):
        assert key in rows[-1]
    assert (run / "history.csv").read_text().count("\n") == 3
    assert (run / "curves.png").stat().st_size > 1000
    assert any((run / "tensorboard").iterdir())
    saved = checkpoint.read_config(run)
    assert saved["model"]["name"] == "seed" and saved["train"]["epochs"] == 2
    # the training state is tensors + JSON, nothing to unpickle
    assert {p.name for p in checkpoint.latest(run).iterdir()} == {
        "model.safetensors",
        "config.json",
        "state.safetensors",
        "state.json",
    }


def test_preset_adam_beta2_reaches_the_optimizer(tiny_tree: Path, tmp_path: Path):
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_tree), "--out", str(run), "--preset", "compact"]
    assert main([*args, "--size", "32", "--batch-size", "8", "--epochs", "1", "--amp", "off"]) == 0
    assert checkpoint.read_config(run)["train"]["adam_beta2"] == 0.99
    groups = checkpoint.load_state(checkpoint.latest(run))["optimizer"]["param_groups"]
    assert [tuple(g["betas"]) for g in groups] == [(0.9, 0.99)] * 2


def test_warmup_lasts_at_least_warmup_steps_or_half_a_short_run() -> None:
    from oasisvq.train.config import TrainConfig
    from oasisvq.train.engine import lr_schedule

    def warm_steps(cfg: TrainConfig, total: int) -> int:
        f = lr_schedule(cfg, total)
        return next(s for s in range(total) if f(s) == 1.0) + 1  # the step at the full rate

    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3)
    assert warm_steps(cfg, 129) == 64  # one short epoch: half of it
    assert warm_steps(cfg, 1000) == 100  # warmup_steps above 3% of the run
    assert warm_steps(cfg, 3870) == 116  # a long run: 3% of it
    old = TrainConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "warmup_steps"})
    assert warm_steps(old, 129) == 3  # a run saved before warmup_steps keeps its schedule
    f = lr_schedule(cfg, 129)
    assert f(0) == pytest.approx(1 / 64) and f(128) == pytest.approx(cfg.final_lr_ratio, abs=1e-3)


def test_deterministic_and_resume_equals_uninterrupted(tiny_tree: Path, tmp_path: Path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _train(tiny_tree, a, "--epochs", "2") == 0
    assert _train(tiny_tree, b, "--epochs", "2") == 0
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same seed, same weights
    # a run that stopped after epoch 1 (its newest checkpoint is epoch 1) resumes to
    # exactly the weights of the uninterrupted run
    shutil.copytree(a, c)
    shutil.rmtree(c / "checkpoints" / "epoch-0002")
    (c / "checkpoints" / "LATEST").write_text("epoch-0001")
    assert _train(tiny_tree, c, "--epochs", "2", "--resume") == 0
    wc = _weights(c)
    assert all(torch.allclose(wa[k].float(), wc[k].float(), atol=1e-6) for k in wa)
    assert [r["epoch"] for r in json.loads((c / "history.json").read_text())] == [1, 2]


def test_mid_epoch_crash_resumes_with_the_whole_epoch_logged(
    tiny_tree: Path, tmp_path: Path, monkeypatch
):
    from oasisvq.train.engine import Engine

    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(tiny_tree, a, "--epochs", "1", "--checkpoint-every", "2") == 0
    step, calls = Engine.train_step, []

    def crashing_step(self, batch):
        calls.append(1)
        if len(calls) == 3:  # after the step checkpoint at step 2, in the last step (of 3)
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(Engine, "train_step", crashing_step)
    assert _train(tiny_tree, b, "--epochs", "1", "--checkpoint-every", "2") == 130  # "killed"
    assert checkpoint.latest(b).name == "epoch-0001-step-000002"
    monkeypatch.setattr(Engine, "train_step", step)
    assert _train(tiny_tree, b, "--epochs", "1", "--checkpoint-every", "2", "--resume") == 0
    ra, rb = (json.loads((r / "history.json").read_text()) for r in (a, b))
    assert [r["epoch"] for r in rb] == [1]
    # the resumed epoch's logs cover all its steps, not only those after the resume
    for key in ("train_loss", "train_recon", "train_mse", "train_perplexity", "val_ssim"):
        assert rb[0][key] == pytest.approx(ra[0][key], rel=1e-4), key
    assert rb[0]["train_codes_used"] == ra[0]["train_codes_used"]


def test_run_dir_is_never_overwritten(tiny_tree: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert _train(tiny_tree, run, "--epochs", "1") == 0
    (run / "keep.txt").write_text("precious")
    assert _train(tiny_tree, run, "--epochs", "1") == 2
    assert "--force" in capsys.readouterr().err
    assert (run / "keep.txt").read_text() == "precious"
    # --force replaces a run of this tool (a folder that is not one: tests/test_trust_rundir.py)
    assert _train(tiny_tree, run, "--epochs", "1", "--force") == 0
    assert not (run / "keep.txt").exists()


def test_unknown_preset_and_wrong_preset_on_resume(tiny_tree: Path, tmp_path: Path, capsys):
    assert (
        main(["train", "--data", str(tiny_tree), "--out", str(tmp_path / "x"), "--preset", "nope"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "nope" in err and len(err.splitlines()) == 1
    run = tmp_path / "run"
    assert _train(tiny_tree, run, "--epochs", "1") == 0
    assert (
        main(
            [
                "train",
                "--data",
                str(tiny_tree),
                "--out",
                str(run),
                "--preset",
                "compact",
                "--resume",
            ]
        )
        == 2
    )
    assert "seed" in capsys.readouterr().err


def test_checkpoint_from_another_preset_is_refused(tiny_tree: Path, tmp_path: Path):
    from oasisvq.errors import ConfigError
    from oasisvq.model.presets import get_preset
    from oasisvq.model.vqvae import VQVAE

    run = tmp_path / "run"
    assert _train(tiny_tree, run, "--epochs", "1") == 0
    with pytest.raises(ConfigError, match="another preset"):
        checkpoint.load_weights(checkpoint.latest(run), VQVAE(get_preset("compact")))


def test_interrupted_checkpoint_write_leaves_previous_one(
    tiny_tree: Path, tmp_path: Path, monkeypatch
):
    from oasisvq.errors import OutputError

    run = tmp_path / "run"
    assert _train(tiny_tree, run, "--epochs", "1") == 0
    before = checkpoint.latest(run)

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_state", disk_full)
    try:  # a one-line OutputError, raised or turned into its exit code by the CLI
        assert _train(tiny_tree, run, "--epochs", "2", "--resume") == OutputError.exit_code
    except OutputError as exc:
        assert "no space left" in str(exc)
    assert checkpoint.latest(run) == before  # LATEST still names a complete checkpoint
    assert (before / "model.safetensors").exists()
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_evaluate_reconstruct_and_api(tiny_tree: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert _train(tiny_tree, run, "--epochs", "1") == 0
    out_json = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--data",
                str(tiny_tree),
                "--split",
                "test",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    r = json.loads(out_json.read_text())
    for key in (
        "n_images",
        "ssim_mean",
        "ssim_std",
        "ms_ssim_mean",
        "psnr_mean",
        "codes_used",
        "codebook_size",
        "bits_per_image",
    ):
        assert key in r
    assert r["n_images"] == 8 and r["codebook_size"] == 16 and r["bits_per_image"] == 4 * 4
    assert (run / "eval-test" / "reconstructions.png").stat().st_size > 1000
    assert (run / "eval-test" / "per_image.csv").read_text().count("\n") == 9

    model = oasisvq.load(run)
    imgs = np.random.default_rng(0).random((5, 32, 32)).astype(np.float32)
    codes = model.encode(imgs)
    assert codes.shape == (5, 2, 2) and codes.dtype == torch.int64
    rec = model.reconstruct(imgs)
    assert rec.shape == (5, 32, 32) and rec.min() >= 0 and rec.max() <= 1
    assert torch.allclose(model.decode(codes), rec)

    out = tmp_path / "rec"
    one = next((tiny_tree / "test").rglob("*.png"))
    assert main(["reconstruct", str(run), str(one), "--out", str(out)]) == 0
    assert len(list((out / "images").glob("*_recon.png"))) == 1


def test_presets_json(capsys):
    assert main(["presets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in rows}
    assert {"seed", "compact", "hifi"} <= names
    for r in rows:
        assert set(r) >= {
            "name",
            "grid",
            "codebook_size",
            "bits_per_image",
            "params",
            "default_epochs",
        }
        assert r["params"] > 0


def test_evaluate_on_missing_split_is_a_clear_error(tiny_tree: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert _train(tiny_tree, run, "--epochs", "1") == 0
    assert (
        main(["evaluate", str(run), "--data", str(tiny_tree), "--split", "holdout"]) == 3
    )  # a DataError
    assert "holdout" in capsys.readouterr().err


def test_empty_data_folder(tmp_path: Path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(["train", "--data", str(empty), "--out", str(tmp_path / "r"), "--epochs", "1"]) == 3
    )  # a DataError
    assert str(empty) in capsys.readouterr().err
    assert os.path.exists(tmp_path / "r") is False or not any((tmp_path / "r").iterdir())
