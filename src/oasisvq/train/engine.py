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
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from oasisvq.device import amp_dtype, pick_device
from oasisvq.errors import Interrupted, RunError
from oasisvq.io import check_writable, write_json
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
    make_task: Callable[[], Task],
    cfg: TrainConfig,
    out: str | Path,
    config: dict,
    resume: bool | str,
) -> History:
    """Seed, build the task (its model's initial weights depend on ``cfg.seed`` alone),
    train it in ``out`` and return the history.

    ``resume``: True continues from ``out``'s newest readable checkpoint and refuses
    (``RunError``, before any training) when there is none: a run is never silently
    trained afresh. ``"auto"`` continues when there is a checkpoint, else starts afresh
    (a folder the tool owns, such as the feature network's). False starts afresh and
    refuses a folder that already holds checkpoints."""
    seed_everything(cfg.seed)
    engine = Engine(make_task(), cfg, Path(out), config)
    if not (resume and engine.resume()):
        if resume is True:
            raise RunError(
                f"{out}: nothing to resume: no checkpoint was written (the training stopped "
                "before its first one); start it again with --force"
            )
        engine.start()
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


def _match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter optimizer tensor its parameter's memory layout again.

    A checkpoint stores contiguous tensors, while a channels_last parameter's moments
    were created channels_last; the fused update does not compute bit for bit the same
    on another layout, so a resumed run would drift from the uninterrupted one."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, Tensor) and value.shape == param.shape:
                if value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Engine:
    def __init__(self, task: Task, cfg: TrainConfig, run_dir: Path, config: dict) -> None:
        D.init_from_env(cfg.device)
        self.task, self.cfg, self.run_dir, self.config = task, cfg, Path(run_dir), config
        if D.is_main():  # a folder that cannot be written fails now, not after an epoch
            check_writable(self.run_dir)
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
        self.written: list[str] = []  # tags of the checkpoints this process wrote, oldest first
        self.resumed_from: Path | None = None

    # ------------------------------------------------------------------ state
    def start(self) -> None:
        """Begin a fresh run: refuse a folder that holds checkpoints (training afresh there
        would mix two runs), and mark the folder as a run of this tool at once, so that
        ``--force`` may replace it even if no checkpoint gets written."""
        if checkpoint.candidates(self.run_dir):
            raise RunError(
                f"{self.run_dir}: already holds checkpoints; continue it with --resume or "
                "replace it with --force"
            )
        if D.is_main():
            write_json(self.run_dir / "config.json", self.config)

    def resume(self) -> bool:
        """Continue from the newest readable checkpoint of the run; False when it has none.

        A damaged checkpoint is reported and passed over for the next older one; when
        every checkpoint is damaged this is a ``RunError`` (and all of them stay)."""
        damaged: list[str] = []
        for ckpt in checkpoint.candidates(self.run_dir):
            try:
                self._load(ckpt)
            except RunError as exc:
                damaged.append(str(exc))
                continue
            if D.is_main():
                for line in damaged:
                    print(f"warning: passed over {line}", file=sys.stderr)
                print(f"resuming {self.run_dir} from {ckpt.name}", file=sys.stderr)
            self.resumed_from = ckpt
            return True
        if damaged:
            raise RunError(f"no readable checkpoint to resume: {damaged[0]}")
        return False

    def _load(self, ckpt: Path) -> None:
        state = checkpoint.load_state(ckpt)
        checkpoint.load_weights(ckpt, self.model)
        try:
            self._apply(state)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            raise RunError(f"{ckpt}: training state does not fit this run ({exc})") from exc

    def _apply(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        _match_layouts(self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
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
            self.run_dir,
            tag,
            self.model,
            self.config,
            state,
            self.cfg.keep_checkpoints,
            written=self.written,
        )

    # ------------------------------------------------------------------ loop
    def epoch_loader(self, epoch: int, skip: int = 0) -> DataLoader:
        """The batches of ``epoch`` after its first ``skip`` steps.

        Nothing here draws from the global RNG (the loader's own seed comes from a
        generator of ``cfg.seed`` and the epoch), so a run resumed at any step, whose RNG
        state is restored before this, draws exactly what the uninterrupted run drew."""
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
            sampler=_Skip(sampler, skip * self.rank_batch),
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            generator=torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch),
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
            "sums": {  # they start from the resumed epoch's (see _carried_sums)
                k: float(D.all_reduce_sum(v.detach().clone())) / world for k, v in sums.items()
            },
            "images": p["images"]
            + int(D.all_reduce_sum(torch.tensor(float(n_images), device=self.device))),
            "seconds": p["seconds"] + seconds,
            "task": self.task.epoch_state() if hasattr(self.task, "epoch_state") else None,
        }

    def _carried_sums(self) -> dict[str, Tensor]:
        """The running log sums a resumed epoch continues from: its earlier steps' sums
        (averages over ranks, hence times W on rank 0 alone), in float32 like the sums, so
        that one process adds the same numbers in the same order as without the resume."""
        if D.rank() != 0:
            return {}
        world = D.world_size()
        return {
            k: torch.tensor(v * world, dtype=torch.float32, device=self.device)
            for k, v in self._partial["sums"].items()
        }

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        self.task.start_epoch()
        if self._partial["task"] is not None and hasattr(self.task, "load_epoch_state"):
            self.task.load_epoch_state(self._partial["task"])
        self._skip = self.step_in_epoch  # steps done before a resume
        loader = self.epoch_loader(self.epoch, skip=self._skip)
        sums = self._carried_sums()
        n_images, start = 0, time.perf_counter()
        bar = tqdm(
            loader,
            total=len(loader),
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
            if self._step_checkpoint_due():
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

    def _step_checkpoint_due(self) -> bool:
        every, step = self.cfg.checkpoint_every, self.step_in_epoch
        # not after the last step: the epoch checkpoint follows (after validation), and a
        # run resumed there would log an epoch with no training steps of its own
        return every > 0 and step % every == 0 and step < self.steps_per_epoch

    def fit(self) -> History:
        """Train until ``cfg.epochs``; checkpoint after every epoch. Ctrl-C ends in an
        ``Interrupted`` that says which checkpoint a ``--resume`` would continue from."""
        try:
            while self.epoch < self.cfg.epochs:
                self._fit_epoch()
        except KeyboardInterrupt:
            raise Interrupted(self._interrupted()) from None
        finally:
            self.history.close()
        return self.history

    def _fit_epoch(self) -> None:
        row = {"epoch": self.epoch + 1, **self.train_epoch()}
        row["lr"] = self.scheduler.get_last_lr()[0]
        if D.is_main():
            self.model.eval()
            with torch.no_grad(), self._autocast():
                row.update(self.task.validate(self.model))
            self.history.record(row)
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        # the checkpoint (whose state holds the history) before the history files: these
        # never show an epoch that a resume would train again
        self.save(f"epoch-{self.epoch:04d}")
        if D.is_main():
            self.history.publish()
            print(_format_row(row), file=sys.stderr, flush=True)
        D.barrier()

    def _interrupted(self) -> str:
        ckpt = checkpoint.latest(self.run_dir)
        if ckpt is None:
            return f"interrupted before the first checkpoint of {self.run_dir}: nothing to resume"
        return f"interrupted; {self.run_dir} can continue from checkpoint {ckpt.name} (--resume)"


class _Skip(Sampler[int]):
    """The indices of ``sampler`` after its first ``n``: a resumed epoch starts at its
    checkpoint's step without loading the batches before it."""

    def __init__(self, sampler: Sampler[int], n: int) -> None:
        self.sampler, self.n = sampler, n

    def __iter__(self):
        return islice(iter(self.sampler), self.n, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.n)


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
