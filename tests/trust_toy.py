"""A training task small enough to run many times in a test, for the shared engine.

Its model has what makes a resume hard to get bit-identical: a convolution with more
than one input channel (kept channels_last), dropout (draws from the global RNG at
every step) and a task-side running count. Run as a script it trains into a folder,
slowly, so that a test can SIGKILL it at any moment:
``python tests/trust_toy.py RUN [resume] [STEP_DELAY]``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from oasisvq.runs import checkpoint
from oasisvq.train.config import TrainConfig
from oasisvq.train.engine import Engine, EpochStatsless, train_task

N, BATCH, EPOCHS = 40, 8, 3  # 5 steps per epoch
CONFIG = {"kind": "features", "toy": True}
TIMING = ("epoch_seconds", "train_images_per_second")  # the history's only varying values


class ToyTask(EpochStatsless):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.model = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Flatten(),
            nn.Linear(4 * 4 * 4, 1),
        )
        self.train_set = TensorDataset(torch.randn(N, 2, 4, 4, generator=g), torch.randn(N, 1))

    def to_device(self, batch, device):
        return [b.to(device) for b in batch]

    def loss(self, model, batch):
        x, y = batch
        loss = F.mse_loss(model(x), y)
        return loss, {"mse": loss.detach()}

    def validate(self, model):
        x, y = self.train_set.tensors
        return {"val_mse": float(F.mse_loss(model(x), y)), "val_nan": float("nan")}


def toy_config(**overrides) -> TrainConfig:
    base = {
        "epochs": EPOCHS,
        "batch_size": BATCH,
        "lr": 1e-2,
        "device": "cpu",
        "amp": "off",
        "seed": 5,
        "checkpoint_every": 2,
        "keep_checkpoints": 100,
        "warmup_steps": 0,
    }
    return TrainConfig(**{**base, **overrides})


def train_toy(run: Path, resume: bool | str = False, **overrides):
    """Train (or resume) the toy run; returns the history."""
    return train_task(ToyTask, toy_config(**overrides), run, CONFIG, resume)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint.latest(run) / "model.safetensors"))


def history(run: Path) -> list[dict]:
    rows = json.loads((run / "history.json").read_text())
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_same_run(run: Path, reference: Path) -> None:
    """Bit-identical final weights and the same history, every epoch exactly once."""
    a, b = weights(reference), weights(run)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [r["epoch"] for r in history(run)] == list(range(1, EPOCHS + 1))
    assert history(run) == history(reference)


def files(run: Path) -> dict[str, tuple[int, int]]:
    """Every file of ``run`` with its size and modification time."""
    return {
        str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in run.rglob("*")
        if p.is_file()
    }


def main() -> int:
    run, resume = Path(sys.argv[1]), len(sys.argv) > 2 and sys.argv[2] == "resume"
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    step = Engine.train_step

    def slow_step(self, batch):
        time.sleep(delay)
        return step(self, batch)

    Engine.train_step = slow_step
    train_toy(run, resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
