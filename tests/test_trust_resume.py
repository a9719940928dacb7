"""--resume continues the newest readable checkpoint, bit for bit, or refuses without
touching the run; a kill -9 at any moment loses nothing but time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from trust_toy import assert_same_run, files, history, train_toy, weights

from oasisvq.errors import Interrupted, OutputError, RunError
from oasisvq.runs import checkpoint
from oasisvq.runs.rundir import is_run_dir
from oasisvq.train.engine import Engine

TOY = Path(__file__).with_name("trust_toy.py")


def _partial_copy(reference: Path, dst: Path, keep: list[str]) -> Path:
    """``reference`` as if it had stopped after the checkpoints ``keep`` (their history
    files as the newest of them left them)."""
    shutil.copytree(reference, dst)
    for p in (dst / "checkpoints").iterdir():
        if p.is_dir() and p.name not in keep:
            shutil.rmtree(p)
    (dst / "checkpoints" / "LATEST").write_text(keep[-1])
    return dst


def test_history_json_holds_no_bare_nan_and_the_state_keeps_it(toy_reference: Path) -> None:
    text = (toy_reference / "history.json").read_text()
    assert "NaN" not in text and json.loads(text)[0]["val_nan"] is None
    state = checkpoint.load_state(checkpoint.latest(toy_reference))
    assert all(r["val_nan"] != r["val_nan"] for r in state["history"])  # NaN came back


@pytest.mark.parametrize("pointer", ["missing", "dangling", "garbled", "older"])
def test_resume_without_a_good_latest_takes_the_newest_checkpoint(
    toy_reference: Path, tmp_path: Path, pointer: str
) -> None:
    run = _partial_copy(toy_reference, tmp_path / "run", ["epoch-0001", "epoch-0002-step-000002"])
    latest = run / "checkpoints" / "LATEST"
    if pointer == "missing":
        latest.unlink()
    elif pointer == "dangling":
        latest.write_text("epoch-0009")
    elif pointer == "garbled":
        latest.write_bytes(b"\xff\x00\x13garbage\n")
    else:  # killed between writing a checkpoint and LATEST
        latest.write_text("epoch-0001")
    assert checkpoint.latest(run).name == "epoch-0002-step-000002"
    train_toy(run, resume=True)
    assert_same_run(run, toy_reference)
    assert (run / "checkpoints" / "epoch-0001").is_dir()  # not written by this process


@pytest.mark.parametrize("damage", ["state.json", "state.safetensors", "model.safetensors"])
def test_a_damaged_newest_checkpoint_is_passed_over_and_kept(
    toy_reference: Path, tmp_path: Path, damage: str, capsys
) -> None:
    run = _partial_copy(toy_reference, tmp_path / "run", ["epoch-0001", "epoch-0002"])
    bad = run / "checkpoints" / "epoch-0002" / damage
    bad.write_bytes(bad.read_bytes()[:40])
    train_toy(run, resume=True)
    assert f"passed over {bad}" in capsys.readouterr().err
    assert_same_run(run, toy_reference)
    # its own epoch 2 went beside the damaged one, which is still there as it was
    assert len(bad.read_bytes()) == 40
    assert (run / "checkpoints" / "epoch-0002-r2").is_dir()


def test_nothing_readable_to_resume_is_refused_and_touches_nothing(
    toy_reference: Path, tmp_path: Path
) -> None:
    run = _partial_copy(toy_reference, tmp_path / "run", ["epoch-0001", "epoch-0002"])
    for tag in ("epoch-0001", "epoch-0002"):
        (run / "checkpoints" / tag / "state.json").write_text("{not json")
    before = files(run)
    with pytest.raises(RunError, match="no readable checkpoint") as err:
        train_toy(run, resume=True)
    assert "\n" not in str(err.value) and "state.json" in str(err.value)
    assert files(run) == before


def test_resume_of_a_run_without_checkpoint_never_trains_afresh(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.csv").write_text("epoch,loss\n1,0.5\n")
    before = files(run)
    with pytest.raises(RunError, match="nothing to resume"):
        train_toy(run, resume=True)
    assert files(run) == before


def test_a_failed_first_checkpoint_ends_in_a_refusal_to_resume(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"

    def disk_full(folder, state):
        raise OSError(28, "No space left on device", str(folder / "state.json"))

    monkeypatch.setattr(checkpoint, "_write_state", disk_full)
    with pytest.raises(OutputError, match="no space left"):
        train_toy(run)
    monkeypatch.undo()
    assert checkpoint.latest(run) is None and is_run_dir(run)  # so --force may replace it
    before = files(run)
    with pytest.raises(RunError, match="nothing to resume"):
        train_toy(run, resume=True)
    assert files(run) == before


def test_a_fresh_training_refuses_a_folder_with_checkpoints(toy_reference: Path, tmp_path: Path):
    run = _partial_copy(toy_reference, tmp_path / "run", ["epoch-0001"])
    before = files(run)
    with pytest.raises(RunError, match="already holds checkpoints"):
        train_toy(run)
    assert files(run) == before


def test_pruning_removes_only_checkpoints_this_process_wrote(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_toy(run, epochs=2, keep_checkpoints=1, checkpoint_every=0)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["LATEST", "epoch-0002"]
    train_toy(run, resume=True, epochs=4, keep_checkpoints=1, checkpoint_every=0)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["LATEST", "epoch-0002", "epoch-0004"]


def test_ctrl_c_names_the_checkpoint_that_exists(tmp_path: Path, monkeypatch) -> None:
    step, calls = Engine.train_step, []

    def interrupted_step(self, batch):
        calls.append(1)
        if len(calls) in (1, 5):
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(Engine, "train_step", interrupted_step)
    run = tmp_path / "run"
    with pytest.raises(Interrupted, match="before the first checkpoint") as err:
        train_toy(run)
    assert isinstance(err.value, KeyboardInterrupt) and err.value.exit_code == 130
    shutil.rmtree(run)
    with pytest.raises(Interrupted, match="epoch-0001-step-000002") as err:
        train_toy(run)  # calls 2, 3, 4 train; 5 is the third step after a fresh start
    assert "--resume" in str(err.value)
    monkeypatch.setattr(Engine, "train_step", step)
    train_toy(run, resume=True)


def test_mid_epoch_resume_of_the_vqvae_is_bit_identical(tiny_tree: Path, tmp_path: Path):
    from oasisvq.cli import main

    args = ["--preset", "seed", "--size", "32", "--batch-size", "8", "--amp", "off"]
    args += ["--seed", "3", "--epochs", "2", "--checkpoint-every", "2"]

    def train(out: Path, *extra: str) -> int:
        return main(["train", "--data", str(tiny_tree), "--out", str(out), *args, *extra])

    a, b = tmp_path / "a", tmp_path / "b"
    assert train(a) == 0
    step, calls = Engine.train_step, []

    def killed_step(self, batch):
        calls.append(1)
        if len(calls) == 3:  # in the last step of epoch 1, after its step checkpoint
            raise KeyboardInterrupt
        return step(self, batch)

    Engine.train_step = killed_step
    try:
        assert train(b) == 130
    finally:
        Engine.train_step = step
    assert checkpoint.latest(b).name == "epoch-0001-step-000002"
    assert train(b, "--resume") == 0
    wa, wb = weights(a), weights(b)
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    assert [r["epoch"] for r in history(b)] == [1, 2]


def _kill_when(run: Path, ready, log: Path, delay: float = 0.05) -> None:
    """Start the toy training in a process and SIGKILL it once ``ready(run)`` holds."""
    # as many threads as here: the float sums of a kernel depend on how it splits them
    threads = str(torch.get_num_threads())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": threads}
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, str(TOY), str(run), "fresh", str(delay)],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while not ready(run):
            assert proc.poll() is None, f"finished before it was killed:\n{log.read_text()}"
            assert time.monotonic() < deadline, "the moment to kill never came"
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _first_checkpoint(run: Path) -> bool:
    return checkpoint.latest(run) is not None


def _history_of_epoch_2(run: Path) -> bool:
    try:
        return len(json.loads((run / "history.json").read_text())) >= 2
    except (OSError, ValueError):
        return False


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
@pytest.mark.parametrize("moment", [_first_checkpoint, _history_of_epoch_2])
def test_kill_9_then_resume_is_bit_identical(toy_reference: Path, tmp_path: Path, moment) -> None:
    run = tmp_path / "run"
    _kill_when(run, moment, tmp_path / "log.txt")
    train_toy(run, resume=True)
    assert_same_run(run, toy_reference)


def test_a_run_folder_that_cannot_be_written_fails_before_training(tmp_path: Path, monkeypatch):
    trained = []
    monkeypatch.setattr(Engine, "train_step", lambda self, batch: trained.append(1))
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="a file stands where a folder is expected"):
        train_toy(tmp_path / "file")
    assert trained == []
