"""MONAI's VQ-VAE beside ours, trained the same way for the same budget; one JSON result.

    python -m benchmarks.monai_peer --data ../shared/data/alzheimer-mri --preset seed \
        --minutes 20 --monai-shape default --out benchmarks/results/monai_seed-default.json
    python -m benchmarks.monai_peer --data ... --preset compact --ours-run runs/compact \
        --minutes 20 --out ...      # ours from an already-trained run (not retrained)

The peer is ``monai.networks.nets.VQVAE`` (``spatial_dims=2``, one channel in and out)
shaped to the preset's latent: one stride-2 level (MONAI's default 4x4 kernel, padding 1)
per entry of the preset's ``widths``, so the same grid (8x8 for 4 levels, 32x32 for 2
levels at 128x128), with the preset's codebook size and code dimension. Two shapes of the
rest (``--monai-shape``):

* ``default``: what a MONAI user gets, MONAI's default widths ``(96, 96, 192)`` (cut to
  the preset's number of levels, or extended with its last width) as ``channels`` and
  ``num_res_channels``, and its default ``num_res_layers=3``;
* ``matched``: the preset's own ``widths`` and ``num_res_layers`` = the most residual
  blocks any encoder level of the preset has (its ``blocks``; ``--monai-res-layers``
  overrides it), about our parameter count.

MONAI's own defaults hold otherwise (EMA decay 0.5, commitment cost 0.25, normal codebook
initialisation, no k-means, no dead-code restarts).

Both models are trained by this project's ``Engine`` (AdamW with the preset's learning
rate, β2 and weight decay, warm-up and cosine schedule, gradient clipping, the same autocast
and channels-last settings) through ``VQVAETask``: the same uint8 slice cache, the same
shuffled batches in the same order (same seed), the preset's batch size and the preset's
reconstruction loss (MSE / variance, mixed with 1 - SSIM where the preset does) plus each
model's own quantization loss. ``--minutes M`` trains each model for M minutes of wall
clock (the cosine schedule then runs over the elapsed fraction of the budget), ``--epochs
E`` for E epochs. Each model trains in its own process, one after the other, so that the
peak resident memory (``ru_maxrss``) belongs to it alone. Both are then measured with
``evaluate_slices`` on the validation split (SSIM, MS-SSIM, PSNR, codes used) in fp32.

Adapter: MONAI's ``VQVAE.forward`` returns ``(reconstruction, quantization_loss)`` only;
the adapter runs the same three steps (``encode``, the ``EMAQuantizer``, ``decode``) so
each batch also yields its code indices without a second encoder pass, and checks them
against ``index_quantize`` at evaluation. MONAI switches autocast off around its quantizer
for CUDA only; the adapter switches it off for the device in use (on a bf16 CPU the
distances would otherwise be bf16), as our quantizer does.

Quick check: ``--minutes 0.5 --limit 256 --eval-limit 64``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import oasisvq
from benchmarks import plots
from benchmarks.machine import (
    command_line,
    machine_info,
    peak_rss_mib,
    save_result,
)
from oasisvq.data.loader import get_split, load_splits
from oasisvq.data.options import DataOptions
from oasisvq.data.slices import SliceSet
from oasisvq.evaluate.reconstruction import evaluate_slices
from oasisvq.model.presets import VQVAEConfig, get_preset
from oasisvq.model.vqvae import VQVAE, VQOutput, count_params
from oasisvq.train.config import TrainConfig
from oasisvq.train.engine import Engine, lr_schedule
from oasisvq.train.vqvae_task import VQVAETask

MONAI_DEFAULT_WIDTHS = (96, 96, 192)  # monai.networks.nets.VQVAE's default channels
MONAI_DEFAULT_RES_LAYERS = 3  # and its default num_res_layers


class MonaiVQVAE(nn.Module):
    """``monai.networks.nets.VQVAE`` with our model's interface: ``forward(x) -> VQOutput
    (recon, codes, vq_loss)`` and a ``cfg`` (a copy of the preset's, renamed), so that
    ``VQVAETask``, the engine and ``evaluate_slices`` take it unchanged."""

    def __init__(
        self,
        cfg: VQVAEConfig,
        shape: str = "default",
        num_res_layers: int | None = None,
        **monai_kwargs: object,
    ) -> None:
        super().__init__()
        from monai.networks.nets import VQVAE as MonaiNet  # lazy: the optional `bench` extra

        levels = len(cfg.widths)
        if shape == "default":
            widths = MONAI_DEFAULT_WIDTHS[:levels]
            widths += (widths[-1],) * (levels - len(widths))
            res_layers = MONAI_DEFAULT_RES_LAYERS
        elif shape == "matched":
            widths, res_layers = tuple(cfg.widths), max(cfg.blocks)
        else:
            raise ValueError(f"monai shape {shape!r}: expected default or matched")
        self.num_res_layers = res_layers if num_res_layers is None else num_res_layers
        self.cfg = dataclasses.replace(
            cfg, name=f"monai-{cfg.name}", description="monai.networks.nets.VQVAE"
        )
        self.monai_config = {
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 1,
            "channels": widths,
            "num_res_layers": self.num_res_layers,
            "num_res_channels": widths,
            "downsample_parameters": tuple((2, 4, 1, 1) for _ in range(levels)),
            "upsample_parameters": tuple((2, 4, 1, 1, 0) for _ in range(levels)),
            "num_embeddings": cfg.quantizer.codebook_size,
            "embedding_dim": cfg.quantizer.dim,
            "commitment_cost": cfg.quantizer.beta,
            "ddp_sync": False,
            **monai_kwargs,
        }
        self.net = MonaiNet(**self.monai_config)

    def forward(self, x: Tensor) -> VQOutput:
        z = self.net.encode(x)
        with torch.autocast(x.device.type, enabled=False):
            quantized, vq_loss, codes = self.net.quantizer.quantizer(z.float())
        return VQOutput(self.net.decode(quantized), codes, vq_loss)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Codes ``(B, h, w)`` via MONAI's own ``index_quantize`` (call in eval mode: in
        training mode MONAI's quantizer also updates its EMA codebook)."""
        return self.net.index_quantize(x)


# ---------------------------------------------------------------- one model, one process
def _time_lambda(cfg: TrainConfig, budget_s: float, clock: dict):
    """LR factor from the elapsed fraction of the training budget (warm-up, then cosine).
    The schedule is laid over 10,000 virtual steps, so its warm-up is ``warmup_fraction`` of
    the budget; ``warmup_steps`` (a count of real steps) never binds here."""
    shape = lr_schedule(cfg, 10_000)

    def f(_step: int) -> float:
        t0 = clock.get("start")
        frac = 0.0 if t0 is None else min(1.0, (time.perf_counter() - t0) / budget_s)
        return shape(int(frac * 10_000))

    return f


def _data(args: argparse.Namespace, size: int) -> tuple[SliceSet, SliceSet]:
    """The training images (the first ``--limit``) and the evaluation split (the first
    ``--eval-limit``) at ``size``."""
    splits = load_splits(args.data, DataOptions(size=size))
    train = get_split(splits, "train", args.data)
    val = get_split(splits, args.eval_split, args.data)
    if args.limit:
        train = train.subset(np.arange(min(args.limit, len(train))))
    if args.eval_limit:
        val = val.subset(np.arange(min(args.eval_limit, len(val))))
    return train, val


def train_and_measure(args: argparse.Namespace, which: str) -> dict:
    """Train ``which`` ("ours" or "monai") as configured by ``args`` and measure it."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset)
    train, val = _data(args, cfg.image_size)
    torch.manual_seed(args.seed)
    if which == "ours":
        model: nn.Module = VQVAE(cfg)
    else:
        extra = {"decay": args.monai_decay} if args.monai_decay is not None else {}
        model = MonaiVQVAE(cfg, args.monai_shape, args.monai_res_layers, **extra)
    tcfg = TrainConfig(
        epochs=args.epochs or 1,
        batch_size=args.batch_size or cfg.batch_size,
        lr=args.lr or cfg.lr,
        weight_decay=cfg.weight_decay,
        adam_beta2=cfg.adam_beta2,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        channels_last=not args.no_channels_last,
    )
    task = VQVAETask(model, train, None, tcfg.batch_size)
    with tempfile.TemporaryDirectory(prefix=f"monai_peer_{which}_") as tmp:
        engine = Engine(task, tcfg, Path(tmp), {"kind": "benchmark"})
        budget = args.minutes * 60 if args.minutes else None
        clock: dict = {}
        if budget:
            engine.scheduler = torch.optim.lr_scheduler.LambdaLR(
                engine.optimizer, _time_lambda(tcfg, budget, clock)
            )
        device = engine.device
        losses: list[float] = []
        times: list[float] = []
        n_images, steps, epoch, steady = 0, 0, 0, None
        engine.model.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        cpu0 = time.process_time()
        clock["start"] = start = time.perf_counter()
        done = False
        while not done:
            task.start_epoch()
            for batch in engine.epoch_loader(epoch):
                if budget and time.perf_counter() - start >= budget:
                    done = True
                    break
                x = task.to_device(batch, device)
                logs = engine.train_step(x)
                losses.append(float(logs["loss"]))
                times.append(time.perf_counter() - start)
                n_images += len(x)
                steps += 1
                if steps == args.warmup_steps:
                    steady = (time.perf_counter(), n_images)
            epoch += 1
            if args.epochs and epoch >= args.epochs:
                done = True
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu0
        train_rss = peak_rss_mib()
        cuda_peak = (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        )
        train_counts = task.counts.cpu().numpy()
        model = engine.model.eval()
        t = time.perf_counter()
        summary, _ = evaluate_slices(model, val, device)
        eval_seconds = time.perf_counter() - t
    check = None
    x = torch.from_numpy(np.asarray(val.images[:16], np.float32) / 255.0)[:, None].to(device)
    with torch.no_grad():
        codes = model(x).codes
        if which == "monai":
            check = bool(torch.equal(model.encode(x), codes))
    code_grid = list(codes.shape[1:])
    if code_grid != [cfg.grid, cfg.grid]:
        raise RuntimeError(f"{which}: code grid {code_grid}, expected {cfg.grid}x{cfg.grid}")
    tail = losses[-max(1, len(losses) // 10) :]
    rate_steady = None
    if steady is not None and steps > args.warmup_steps:
        rate_steady = (n_images - steady[1]) / max(1e-9, start + seconds - steady[0])
    return {
        "model": which,
        "name": model.cfg.name,
        "params": count_params(model),
        "monai_config": getattr(model, "monai_config", None),
        "train": {
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "steps": steps,
            "epochs_started": epoch,
            "images": n_images,
            "images_per_second": n_images / seconds if seconds else None,
            "images_per_second_after_warmup": rate_steady,
            "images_per_cpu_second": n_images / cpu_seconds if cpu_seconds else None,
            "final_loss": float(np.mean(tail)) if tail else None,
            "loss_curve": _curve(times, losses),
            "codes_used_last_epoch": int((train_counts > 0).sum()),
            "peak_rss_mib": train_rss,
            "cuda_peak_allocated_mib": cuda_peak,
            "config": tcfg.to_dict(),
            "amp": None if engine.amp is None else str(engine.amp).replace("torch.", ""),
        },
        "eval": {**summary, "seconds": eval_seconds, "split": args.eval_split},
        "code_grid": code_grid,
        "index_quantize_matches_adapter": check,
        "peak_rss_mib": peak_rss_mib(),
        "device": str(device),
        "machine": machine_info(),
    }


def _curve(times: list[float], losses: list[float], points: int = 200) -> list[list[float]]:
    """``[[seconds, loss], ...]``: the loss averaged over ``points`` equal runs of steps."""
    if not losses:
        return []
    edges = np.linspace(0, len(losses), min(points, len(losses)) + 1).astype(int)
    return [
        [float(times[b - 1]), float(np.mean(losses[a:b]))]
        for a, b in zip(edges[:-1], edges[1:], strict=True)
        if b > a
    ]


def plot(result: dict, path: Path) -> None:
    """Training loss against wall-clock seconds for both models, and their SSIM and rate."""
    plt = plots.pyplot()

    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(13, 3.8))
    who = (("ours", "oasisvq", "C0"), ("peer", f"MONAI {result['monai']}", "C1"))
    for key, label, colour in who:
        curve = np.array(result[key]["train"].get("loss_curve") or [[0, np.nan]])
        ax.plot(curve[:, 0] / 60, curve[:, 1], color=colour, label=label)
    ax.set(xlabel="training minutes", ylabel="training loss", yscale="log", title="loss")
    ax.legend()
    labels = [label for _, label, _ in who]
    colours = [c for _, _, c in who]
    ssim = [result[k]["eval"]["ssim_mean"] for k, _, _ in who]
    rate = [result[k]["train"]["images_per_second"] or 0 for k, _, _ in who]
    for axis, values, name in ((bx, ssim, "SSIM (validation)"), (cx, rate, "train images / s")):
        axis.bar(labels, values, color=colours)
        for i, v in enumerate(values):
            axis.text(i, v, f"{v:.3g}", ha="center", va="bottom")
        axis.set(title=name)
    grid = "x".join(str(g) for g in result["ours"].get("code_grid", []))
    cfg = f"({grid} grid, {result['ours']['eval']['codebook_size']} codes)"
    fig.suptitle(
        f"preset {result['preset']} {cfg}: same engine, loss, batches and budget "
        f"({result['machine']['cpu']})",
        fontsize=9,
    )
    plots.save(fig, path, dpi=110)


def measure_ours_run(args: argparse.Namespace) -> dict:
    """Evaluate an already-trained run of ours; training figures from its history."""
    if args.threads:
        torch.set_num_threads(args.threads)
    run = oasisvq.load(args.ours_run, args.device)
    model, device = run.vqvae, run.device
    if model.cfg.name != args.preset:
        print(
            f"warning: --ours-run is preset {model.cfg.name!r}, not {args.preset!r}",
            file=sys.stderr,
        )
    _, val = _data(args, model.cfg.image_size)
    history = json.loads((Path(args.ours_run) / "history.json").read_text())
    seconds = sum(r["epoch_seconds"] for r in history)
    images = sum(r["epoch_seconds"] * r["train_images_per_second"] for r in history)
    summary, _ = evaluate_slices(model, val, device)
    return {
        "model": "ours",
        "name": model.cfg.name,
        "run": str(args.ours_run),
        "params": count_params(model),
        "train": {
            "seconds": seconds,
            "epochs_started": len(history),
            "images": images,
            "images_per_second": images / seconds if seconds else None,
            "peak_rss_mib": None,
            "note": "from the run's history.json: a full training, not the budget of the peer",
        },
        "eval": {**summary, "split": args.eval_split},
        "peak_rss_mib": None,
        "device": str(device),
        "machine": machine_info(),
    }


# ---------------------------------------------------------------- orchestration
def _worker(args: argparse.Namespace, which: str, argv: list[str]) -> dict:
    """Run ``which`` in a fresh interpreter (own peak RSS) and read its JSON back."""
    with tempfile.TemporaryDirectory(prefix="monai_peer_") as tmp:
        out = Path(tmp) / f"{which}.json"
        cmd = [
            sys.executable,
            "-m",
            __spec__.name,
            *argv,
            "--worker",
            which,
            "--worker-out",
            str(out),
        ]
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def _ratios(ours: dict, monai: dict) -> dict:
    """ours / MONAI for the comparable figures (None where either is missing or 0)."""

    def r(a: float | None, b: float | None) -> float | None:
        return None if a is None or b in (None, 0) else a / b

    return {
        "ssim": r(ours["eval"]["ssim_mean"], monai["eval"]["ssim_mean"]),
        "ms_ssim": r(ours["eval"]["ms_ssim_mean"], monai["eval"]["ms_ssim_mean"]),
        "psnr": r(ours["eval"]["psnr_mean"], monai["eval"]["psnr_mean"]),
        "codes_used": r(ours["eval"]["codes_used"], monai["eval"]["codes_used"]),
        "train_images_per_second": r(
            ours["train"]["images_per_second"], monai["train"]["images_per_second"]
        ),
        "train_peak_rss": r(ours["train"]["peak_rss_mib"], monai["train"]["peak_rss_mib"]),
        "params": r(ours["params"], monai["params"]),
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=None, help="data root (default: the built-in MNI152 brain)")
    p.add_argument("--preset", required=True)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="wall-clock training budget per model")
    budget.add_argument("--epochs", type=int, help="training epochs per model")
    p.add_argument(
        "--ours-run", default=None, help="an already-trained run of ours instead of training one"
    )
    p.add_argument(
        "--limit", type=int, default=None, help="train on the first N training images only"
    )
    p.add_argument("--eval-split", default="validate")
    p.add_argument(
        "--eval-limit", type=int, default=None, help="evaluate on the first N images only"
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--lr", type=float, default=None, help="default: the preset's")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", help="auto, bf16, fp16 or off (as oasisvq train)")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-steps", type=int, default=5, help="steps left out of the steady rate")
    p.add_argument(
        "--monai-shape",
        choices=("default", "matched"),
        default="default",
        help="MONAI's default widths and residual layers, or the preset's (see above)",
    )
    p.add_argument(
        "--monai-res-layers", type=int, default=None, help="override the shape's num_res_layers"
    )
    p.add_argument(
        "--monai-decay", type=float, default=None, help="EMA decay (default: MONAI's, 0.5)"
    )
    p.add_argument("--out", required=True, help="JSON result file")
    p.add_argument("--worker", choices=("ours", "monai"), help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        result = train_and_measure(args, args.worker)
        save_result(result, args.worker_out)
        return 0

    command = command_line()
    argv = list(sys.argv[1:])  # the workers' arguments: all but --ours-run
    if args.ours_run:
        argv = [a for a in argv if not a.startswith("--ours-run=")]
        if "--ours-run" in argv:
            i = argv.index("--ours-run")
            del argv[i : i + 2]
    import monai  # lazy: the optional `bench` extra

    monai_result = _worker(args, "monai", argv)
    ours = measure_ours_run(args) if args.ours_run else _worker(args, "ours", argv)
    result = {
        "benchmark": "monai_peer",
        "preset": args.preset,
        "data": args.data,
        "budget": {"minutes": args.minutes} if args.minutes else {"epochs": args.epochs},
        "monai_shape": args.monai_shape,
        "train_limit": args.limit,
        "eval_split": args.eval_split,
        "eval_limit": args.eval_limit,
        "monai": monai.__version__,
        "ours": ours,
        "peer": monai_result,
        "ratios_ours_over_monai": _ratios(ours, monai_result),
        "notes": [
            "same Engine, TrainConfig, loss (the preset's reconstruction loss + each model's own "
            "quantization loss), batches and order for both models; each trained in its own process",
            "images_per_second is wall clock over the whole budget (first steps included); "
            "images_per_second_after_warmup leaves out --warmup-steps steps; on a shared CPU "
            "images_per_cpu_second * threads estimates the rate on idle cores",
            "peak_rss_mib of train: the process's ru_maxrss after training (data cache pages included)",
        ],
        "command": command,
        "machine": machine_info(),
    }
    save_result(result, args.out, plot)
    show = {
        who: {
            "ssim": round(r["eval"]["ssim_mean"], 4),
            "psnr": round(r["eval"]["psnr_mean"], 2),
            "codes_used": r["eval"]["codes_used"],
            "train_img_s": r["train"]["images_per_second"],
            "steps": r["train"].get("steps"),
            "rss_mib": r["train"]["peak_rss_mib"],
        }
        for who, r in (("ours", ours), ("monai", monai_result))
    }
    print(json.dumps(show))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
