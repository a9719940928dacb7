"""The one training loop, shared by the VQ-VAE and the priors.

A ``Task`` says what a batch is, what the loss is and how to validate; the engine
does the rest: device and autocast, DistributedDataParallel under torchrun, the
progress bar, LR schedule, gradient clipping, history, atomic checkpoints and resume.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from oasisvq.device import amp_dtype, pick_device
from oasisvq.runs import checkpoint
from oasisvq.train import distributed as D
from oasisvq.train.config import TrainConfig
from oasisvq.train.history import History


class Task(Protocol):
    model: nn.Module
    train_set: Dataset

    def to_device(self, batch: Any, device: torch.device) -> Any: ...

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss to minimise and detached scalars to log (summed over the epoch)."""

    def start_epoch(self) -> None: ...

    def epoch_metrics(self) -> dict[str, float]:
        """Whole-epoch statistics (e.g. code usage), reduced over ranks."""

    def validate(self, model: nn.Module) -> dict[str, float]: ...

    # Optional: ``epoch_state() -> object`` (the whole-epoch statistics so far, reduced
    # over ranks, JSON-able) and ``load_epoch_state(state)``, so that a run resumed from a
    # step checkpoint reports its whole epoch; ``set_step(step)``, told the global optimizer
    # step (from 0, the same after a resume) before each loss.


class EpochStatsless:
    """Mixin for tasks without whole-epoch statistics: no-op ``start_epoch`` and an empty
    ``epoch_metrics``."""

    def start_epoch(self) -> None:
        pass

    def epoch_metrics(self) -> dict[str, float]:
        return {}


def train_task(
    make_task: Callable[[], Task], cfg: TrainConfig, out: str | Path, config: dict, resume: bool
) -> History:
    """Seed, build the task (its model's initial weights depend on ``cfg.seed`` alone),
    train it in ``out`` and return the history; ``resume`` continues from ``out``'s
    latest checkpoint."""
    seed_everything(cfg.seed)
    engine = Engine(make_task(), cfg, Path(out), config)
    if resume:
        engine.resume()
    return engine.fit()


def lr_schedule(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The LR factor of each optimizer step of a ``total_steps`` run (for ``LambdaLR``):
    linear warm-up over ``warmup_fraction`` of the run (at least ``warmup_steps``, at most
    half of it), then cosine decay to ``final_lr_ratio``."""
    warm = max(1, int(cfg.warmup_fraction * total_steps), min(cfg.warmup_steps, total_steps // 2))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total_steps - warm))
        return cfg.final_lr_ratio + (1 - cfg.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def _rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Engine:
    def __init__(self, task: Task, cfg: TrainConfig, run_dir: Path, config: dict) -> None:
        D.init_from_env(cfg.device)
        self.task, self.cfg, self.run_dir, self.config = task, cfg, Path(run_dir), config
        if D.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = pick_device(cfg.device)
        self.amp = amp_dtype(cfg.amp, self.device)
        seed_everything(cfg.seed)
        model = task.model.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.trained = model  # what the loss calls: compiled and/or DDP-wrapped
        if D.is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.trained = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if cfg.compile:
            self.trained = torch.compile(self.trained)
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            betas=(0.9, cfg.adam_beta2),
            fused=self.device.type in ("cpu", "cuda"),  # one kernel for all parameters
        )
        # cfg.batch_size is the global batch: each of the W processes takes batch_size / W
        world = D.world_size()
        self.rank_batch = max(1, math.ceil(cfg.batch_size / world))
        self.global_batch = self.rank_batch * world
        if self.global_batch != cfg.batch_size and D.is_main():
            print(
                f"warning: batch size {cfg.batch_size} does not divide over {world} processes; "
                f"using {self.rank_batch} per process ({self.global_batch} in all)",
                file=sys.stderr,
            )
        self.steps_per_epoch = len(self.epoch_loader(0))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_schedule(cfg, cfg.epochs * self.steps_per_epoch)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.epoch, self.step_in_epoch = 0, 0
        # the running epoch, so that a step checkpoint carries it: per-step logs summed
        # over steps (each step's value averaged over the ranks), images and seconds
        self._partial: dict[str, Any] = _empty_partial()
        self._skip = 0
        self.history = History(self.run_dir)

    # ------------------------------------------------------------------ state
    def resume(self) -> bool:
        """Load the newest checkpoint of the run, if any. Returns whether one was found."""
        ckpt = checkpoint.latest(self.run_dir)
        if ckpt is None:
            return False
        checkpoint.load_weights(ckpt, self.model)
        state = checkpoint.load_state(ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        if state.get("global_batch") != self.global_batch and self.step_in_epoch:
            self.step_in_epoch = 0  # another global batch: the steps differ, redo the epoch
        partial = state.get("partial")
        if self.step_in_epoch and partial and partial.get("steps") == self.step_in_epoch:
            self._partial = partial  # the resumed epoch's log covers its earlier steps too
        self.history = History(self.run_dir, state["history"])
        return True

    def save(self, tag: str, partial: dict | None = None) -> None:
        if not D.is_main():
            return
        state = {
            "partial": partial,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "world_size": D.world_size(),
            "global_batch": self.global_batch,
            "history": self.history.rows,
        }
        checkpoint.save(
            self.run_dir, tag, self.model, self.config, state, self.cfg.keep_checkpoints
        )

    # ------------------------------------------------------------------ loop
    def epoch_loader(self, epoch: int) -> DataLoader:
        """The training batches of ``epoch``, in the order every run with this seed sees."""
        # The same sampler for any number of processes: one epoch-seeded permutation, rank r
        # taking its positions r, r + W, ...; so global step k covers the same images (the
        # permutation's positions k*B .. k*B + B - 1) whatever W is, which is what makes a
        # W-process run match a one-process run and lets a run resume mid-epoch with another W.
        ds = self.task.train_set
        sampler = DistributedSampler(
            ds,
            num_replicas=D.world_size(),
            rank=D.rank(),
            shuffle=True,
            seed=self.cfg.seed,
            drop_last=False,
        )
        sampler.set_epoch(epoch)
        return DataLoader(
            ds,
            batch_size=self.rank_batch,
            sampler=sampler,
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def _autocast(self):
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def train_step(self, batch: Any) -> dict[str, Tensor]:
        """One optimizer step on a batch already on the device; returns the logged scalars."""
        if hasattr(self.task, "set_step"):
            self.task.set_step(self.epoch * self.steps_per_epoch + self.step_in_epoch)
        with self._autocast():
            loss, logs = self.task.loss(self.trained, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {"loss": loss.detach(), **logs}

    def _epoch_so_far(self, sums: dict[str, Tensor], n_images: int, seconds: float) -> dict:
        """The running epoch as plain numbers, reduced over ranks (a collective: every
        rank calls it at the same step): what a step checkpoint stores."""
        world = D.world_size()
        p = self._partial
        return {
            "steps": p["steps"] + self.step_in_epoch - self._skip,
            "sums": {
                k: p["sums"].get(k, 0.0) + float(D.all_reduce_sum(v.detach().clone())) / world
                for k, v in sums.items()
            },
            "images": p["images"]
            + int(D.all_reduce_sum(torch.tensor(float(n_images), device=self.device))),
            "seconds": p["seconds"] + seconds,
            "task": self.task.epoch_state() if hasattr(self.task, "epoch_state") else None,
        }

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        self.task.start_epoch()
        if self._partial["task"] is not None and hasattr(self.task, "load_epoch_state"):
            self.task.load_epoch_state(self._partial["task"])
        loader = self.epoch_loader(self.epoch)
        skip = self._skip = self.step_in_epoch  # steps done before a resume
        sums: dict[str, Tensor] = {}
        n_images, start = 0, time.perf_counter()
        bar = tqdm(
            islice(loader, skip, None),
            total=len(loader) - skip,
            initial=0,
            desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
            disable=not D.is_main(),
            file=sys.stderr,
            dynamic_ncols=True,
        )
        for batch in bar:
            batch = self.task.to_device(batch, self.device)
            logs = self.train_step(batch)
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v.float()
            n_images += _batch_len(batch)
            self.step_in_epoch += 1
            rate = n_images * D.world_size() / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{logs['loss'].item():.4f}", img_s=f"{rate:.1f}")
            every = self.cfg.checkpoint_every
            # not after the last step: the epoch checkpoint follows (after validation), and a
            # run resumed there would log an epoch with no training steps of its own
            if every and self.step_in_epoch % every == 0 and self.step_in_epoch < len(loader):
                so_far = self._epoch_so_far(sums, n_images, time.perf_counter() - start)
                self.save(f"epoch-{self.epoch + 1:04d}-step-{self.step_in_epoch:06d}", so_far)
        bar.close()
        whole = self._epoch_so_far(sums, n_images, time.perf_counter() - start)
        self._partial = _empty_partial()
        steps = max(1, whole["steps"])
        return {
            **{f"train_{k}": v / steps for k, v in whole["sums"].items()},
            **self.task.epoch_metrics(),
            "epoch_seconds": whole["seconds"],
            "train_images_per_second": whole["images"] / max(whole["seconds"], 1e-9),
        }

    def fit(self) -> History:
        """Train until ``cfg.epochs``; checkpoint after every epoch."""
        while self.epoch < self.cfg.epochs:
            row = {"epoch": self.epoch + 1, **self.train_epoch()}
            row["lr"] = self.scheduler.get_last_lr()[0]
            if D.is_main():
                self.model.eval()
                with torch.no_grad(), self._autocast():
                    row.update(self.task.validate(self.model))
                self.history.append(row)
                print(_format_row(row), file=sys.stderr, flush=True)
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            self.save(f"epoch-{self.epoch:04d}")
            D.barrier()
        self.history.close()
        return self.history


def _empty_partial() -> dict[str, Any]:
    return {"steps": 0, "sums": {}, "images": 0, "seconds": 0.0, "task": None}


def _batch_len(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        return _batch_len(next(iter(batch.values())))
    return _batch_len(batch[0])


def _format_row(row: dict) -> str:
    parts = [f"epoch {row['epoch']}"]
    for k, v in row.items():
        if k == "epoch":
            continue
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return "  ".join(parts)
