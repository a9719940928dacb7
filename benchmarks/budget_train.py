"""Train one model through the project's ``Engine`` for a wall-clock budget or a number
of epochs, step by step, with its loss curve and rates (what ``monai_peer`` runs for
each of the two models it compares)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from oasisvq.train.config import TrainConfig
from oasisvq.train.engine import Engine, lr_schedule
from oasisvq.train.vqvae_task import VQVAETask


def time_lambda(cfg: TrainConfig, budget_s: float, clock: dict) -> Callable[[int], float]:
    """LR factor from the elapsed fraction of the training budget (warm-up, then cosine).
    The schedule is laid over 10,000 virtual steps, so its warm-up is ``warmup_fraction`` of
    the budget; ``warmup_steps`` (a count of real steps) never binds here."""
    shape = lr_schedule(cfg, 10_000)

    def f(_step: int) -> float:
        t0 = clock.get("start")
        frac = 0.0 if t0 is None else min(1.0, (time.perf_counter() - t0) / budget_s)
        return shape(int(frac * 10_000))

    return f


def own_stream(task: VQVAETask, seed: int) -> Callable[[Tensor, torch.device], Tensor]:
    """``task.to_device`` with its random changes of volumes (``augment``) drawn from a
    generator stream of their own, seeded by ``seed``: two models see the same changed
    volumes, although our quantizer also draws from torch's generator (k-means, restarts)
    and MONAI's does not. Without augmentation nothing is drawn and nothing changes."""
    state = torch.Generator().manual_seed(seed).get_state()

    def to_device(batch: Tensor, device: torch.device) -> Tensor:
        nonlocal state
        with torch.random.fork_rng(devices=[]):  # the global stream resumes untouched
            torch.set_rng_state(state)
            x = task.to_device(batch, device)
            state = torch.get_rng_state()
        return x

    return to_device


def train_for(
    engine: Engine,
    task: VQVAETask,
    minutes: float | None,
    epochs: int | None,
    warmup_steps: int,
) -> dict:
    """Train ``engine``'s model for ``minutes`` of wall clock (the learning-rate schedule
    then runs over the elapsed fraction of the budget) or ``epochs`` epochs. Returns
    seconds (wall and CPU), steps, images, rates (the steady one leaves out the first
    ``warmup_steps`` steps), the final loss and the loss curve."""
    budget = minutes * 60 if minutes else None
    clock: dict = {}
    if budget:
        engine.scheduler = torch.optim.lr_scheduler.LambdaLR(
            engine.optimizer, time_lambda(engine.cfg, budget, clock)
        )
    device = engine.device
    to_device = own_stream(task, engine.cfg.seed)
    losses: list[float] = []
    times: list[float] = []
    n_images, steps, epoch, steady = 0, 0, 0, None
    engine.model.train()
    cpu0 = time.process_time()
    clock["start"] = start = time.perf_counter()
    done = False
    while not done:
        task.start_epoch()
        for batch in engine.epoch_loader(epoch):
            if budget and time.perf_counter() - start >= budget:
                done = True
                break
            x = to_device(batch, device)
            logs = engine.train_step(x)
            losses.append(float(logs["loss"]))
            times.append(time.perf_counter() - start)
            n_images += len(x)
            steps += 1
            if steps == warmup_steps:
                steady = (time.perf_counter(), n_images)
        epoch += 1
        if epochs and epoch >= epochs:
            done = True
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu0
    tail = losses[-max(1, len(losses) // 10) :]
    rate_steady = None
    if steady is not None and steps > warmup_steps:
        rate_steady = (n_images - steady[1]) / max(1e-9, start + seconds - steady[0])
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "steps": steps,
        "epochs_started": epoch,
        "images": n_images,
        "images_per_second": n_images / seconds if seconds else None,
        "images_per_second_after_warmup": rate_steady,
        "images_per_cpu_second": n_images / cpu_seconds if cpu_seconds else None,
        "final_loss": float(np.mean(tail)) if tail else None,
        "loss_curve": curve(times, losses),
    }


def curve(times: list[float], losses: list[float], points: int = 200) -> list[list[float]]:
    """``[[seconds, loss], ...]``: the loss averaged over ``points`` equal runs of steps."""
    if not losses:
        return []
    edges = np.linspace(0, len(losses), min(points, len(losses)) + 1).astype(int)
    return [
        [float(times[b - 1]), float(np.mean(losses[a:b]))]
        for a, b in zip(edges[:-1], edges[1:], strict=True)
        if b > a
    ]
