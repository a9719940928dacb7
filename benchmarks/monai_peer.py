"""MONAI's VQ-VAE beside ours, trained the same way for the same budget; one JSON result.

    python -m benchmarks.monai_peer --data ../shared/data/alzheimer-mri --preset seed \
        --minutes 20 --monai-shape default --out benchmarks/results/monai_seed-default.json
    python -m benchmarks.monai_peer --data ... --preset compact --ours-run runs/compact \
        --minutes 20 --out ...      # ours from an already-trained run, 2D or 3D (not retrained)
    python -m benchmarks.monai_peer --data ../shared/data/ixi-t1 --preset compact3d \
        --minutes 20 --out benchmarks/results/monai_compact3d-default.json   # whole volumes

The peer is ``monai.networks.nets.VQVAE`` (``spatial_dims`` = the preset's ``dims``: 2 for
slices, 3 for whole volumes; one channel in and out) shaped to the preset's latent: one
stride-2 level (MONAI's default kernel of side 4, padding 1) per entry of the preset's
``widths``, so the same grid (8x8 for 4 levels, 32x32 for 2 levels at 128x128; 12x14x12
for ``compact3d``'s 3 levels and 24x28x24 for ``hifi3d``'s 2 at 96x112x96), with the
preset's codebook size and code dimension (``benchmarks/monai_adapter.py``). Two shapes
of the rest (``--monai-shape``):

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
and channels-last settings) through ``VQVAETask``: the same uint8 cache, the same
shuffled batches in the same order (same seed), the preset's batch size and the preset's
reconstruction loss (MSE / variance, mixed with 1 - SSIM where the preset does; SSIM-3D
for volumes) plus each model's own quantization loss. ``--minutes M`` trains each model
for M minutes of wall clock (the cosine schedule then runs over the elapsed fraction of
the budget), ``--epochs E`` for E epochs. Each model trains in its own process, one after
the other, so that the peak resident memory (``ru_maxrss``) belongs to it alone. Both are
then measured on the validation split in fp32: slices with ``evaluate_slices`` (SSIM,
MS-SSIM, PSNR, codes used), volumes with ``evaluate_volumes`` (the same in 3D, and SSIM
and PSNR inside the brain mask), with the images (volumes) per second of training and of
evaluation.

3D presets: the data are whole volumes prepared as ``oasisvq train`` prepares them for
the preset (its voxel size and crop shape, brain masks found automatically); with the
preset's ``augment``, both models see the same random changes of their training volumes
(drawn from a generator stream of their own, so that our quantizer's k-means and code
restarts do not shift them); channels-last is off (conv3d has no such layout), as in
``oasisvq train``. ``--volume-shape X Y Z`` crops the volumes to another shape (each side
a multiple of 2^levels) and builds both models for it: a cheaper comparison.

Adapter: MONAI's ``VQVAE.forward`` returns ``(reconstruction, quantization_loss)`` only;
the adapter runs the same three steps (``encode``, the ``EMAQuantizer``, ``decode``) so
each batch also yields its code indices without a second encoder pass, and checks them
against ``index_quantize`` at evaluation. MONAI switches autocast off around its quantizer
for CUDA only; the adapter switches it off for the device in use (on a bf16 CPU the
distances would otherwise be bf16), as our quantizer does.

Quick checks: ``--minutes 0.5 --limit 256 --eval-limit 64``; in 3D ``--minutes 0.5
--limit 8 --eval-limit 4``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import monai
import numpy as np
import torch
from torch import nn

import oasisvq
from benchmarks import plots
from benchmarks.budget_train import train_for
from benchmarks.machine import (
    command_line,
    machine_info,
    peak_rss_mib,
    save_result,
)
from benchmarks.monai_adapter import SHAPES, MonaiVQVAE
from oasisvq.data.loader import get_split, load_splits
from oasisvq.data.options import DataOptions
from oasisvq.data.slices import SliceSet
from oasisvq.data.volumes3d import VolumeSet, split_arrays
from oasisvq.errors import ConfigError
from oasisvq.evaluate.reconstruction import evaluate_slices
from oasisvq.evaluate.volumes import evaluate_volumes
from oasisvq.model.presets import VQVAEConfig, get_preset
from oasisvq.model.vqvae import VQVAE, count_params
from oasisvq.train.config import TrainConfig
from oasisvq.train.engine import Engine
from oasisvq.train.vqvae_run import data_options_for
from oasisvq.train.vqvae_task import VQVAETask

CHECKED = {2: 16, 3: 2}  # slices / volumes whose codes are checked against index_quantize


# ---------------------------------------------------------------- one model, one process
def preset_config(preset: str, volume_shape: list[int] | None = None) -> VQVAEConfig:
    """Preset ``preset``, on volumes of ``volume_shape`` where given (3D presets only).
    Raises ConfigError for a shape on a 2D preset or one the encoder cannot halve."""
    cfg = get_preset(preset)
    if volume_shape is None:
        return cfg
    if cfg.dims != 3:
        raise ConfigError(f"--volume-shape: preset {preset!r} is 2D (slices of --size)")
    return get_preset(preset, volume_shape=tuple(volume_shape))


def _data(
    args: argparse.Namespace, opts: DataOptions
) -> tuple[SliceSet | VolumeSet, SliceSet | VolumeSet]:
    """The training slices or volumes (the first ``--limit``) and the evaluation split
    (the first ``--eval-limit``), prepared with ``opts``."""
    splits = load_splits(args.data, opts)
    train = get_split(splits, "train", args.data)
    val = get_split(splits, args.eval_split, args.data)
    if args.limit:
        train = train.subset(np.arange(min(args.limit, len(train))))
    if args.eval_limit:
        val = val.subset(np.arange(min(args.eval_limit, len(val))))
    return train, val


def _evaluate(model: nn.Module, val: SliceSet | VolumeSet, device: torch.device) -> dict:
    """``evaluate_slices`` or ``evaluate_volumes`` of ``val`` (fp32): the summary with the
    seconds it took and the images (volumes) per second."""
    t = time.perf_counter()
    if isinstance(val, VolumeSet):
        summary, _ = evaluate_volumes(model, val, device)
    else:
        summary, _ = evaluate_slices(model, val, device)
    seconds = time.perf_counter() - t
    return {**summary, "seconds": seconds, "images_per_second": len(val) / max(seconds, 1e-9)}


def _codes_checked(
    model: nn.Module, val: SliceSet | VolumeSet, device: torch.device, which: str
) -> tuple[list[int], bool | None]:
    """The code grid of the first few validation inputs, and for MONAI whether its own
    ``index_quantize`` gives the adapter's codes. Raises if the grid is not the preset's."""
    cfg = model.cfg
    arrays = split_arrays(val)
    x = np.asarray(arrays[: CHECKED[cfg.dims]], np.float32) / 255.0
    x = torch.from_numpy(x)[:, None].to(device)
    with torch.no_grad():
        codes = model(x).codes
        check = bool(torch.equal(model.encode(x), codes)) if which == "monai" else None
    grid = list(codes.shape[1:])
    if grid != list(cfg.grid_shape):
        expected = "x".join(map(str, cfg.grid_shape))
        raise RuntimeError(f"{which}: code grid {grid}, expected {expected}")
    return grid, check


def train_and_measure(args: argparse.Namespace, which: str) -> dict:
    """Train ``which`` ("ours" or "monai") as configured by ``args`` and measure it."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = preset_config(args.preset, args.volume_shape)
    train, val = _data(args, data_options_for(cfg))
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
        # conv3d weights have no channels-last layout (as `oasisvq train`)
        channels_last=not args.no_channels_last and cfg.dims == 2,
    )
    task = VQVAETask(model, train, None, tcfg.batch_size)
    with tempfile.TemporaryDirectory(prefix=f"monai_peer_{which}_") as tmp:
        engine = Engine(task, tcfg, Path(tmp), {"kind": "benchmark"})
        device = engine.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trained = train_for(engine, task, args.minutes, args.epochs, args.warmup_steps)
        train_rss = peak_rss_mib()
        cuda_peak = (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        )
        train_counts = task.counts.cpu().numpy()
        model = engine.model.eval()
        evaluated = _evaluate(model, val, device)
    code_grid, check = _codes_checked(model, val, device, which)
    return {
        "model": which,
        "name": model.cfg.name,
        "params": count_params(model),
        "monai_config": getattr(model, "monai_config", None),
        "train": {
            **trained,
            "codes_used_last_epoch": int((train_counts > 0).sum()),
            "peak_rss_mib": train_rss,
            "cuda_peak_allocated_mib": cuda_peak,
            "config": tcfg.to_dict(),
            "amp": None if engine.amp is None else str(engine.amp).replace("torch.", ""),
            "augment": cfg.augment,
        },
        "eval": {**evaluated, "split": args.eval_split},
        "code_grid": code_grid,
        "index_quantize_matches_adapter": check,
        "peak_rss_mib": peak_rss_mib(),
        "device": str(device),
        "machine": machine_info(),
    }


def plot(result: dict, path: Path) -> None:
    """Training loss against wall-clock seconds for both models, and their SSIM and rate."""
    plt = plots.pyplot()

    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(13, 3.8))
    who = (("ours", "oasisvq", "C0"), ("peer", f"MONAI {result['monai']}", "C1"))
    for key, label, colour in who:
        curve = np.array(result[key]["train"].get("loss_curve") or [[0, np.nan]])
        marker = "o" if len(curve) == 1 else None  # one step in the budget: a point
        ax.plot(curve[:, 0] / 60, curve[:, 1], color=colour, label=label, marker=marker)
    ax.set(xlabel="training minutes", ylabel="training loss", yscale="log", title="loss")
    ax.legend()
    labels = [label for _, label, _ in who]
    colours = [c for _, _, c in who]
    ssim = [result[k]["eval"]["ssim_mean"] for k, _, _ in who]
    rate = [result[k]["train"]["images_per_second"] or 0 for k, _, _ in who]
    unit = result.get("unit", "image")
    for axis, values, name in ((bx, ssim, "SSIM (validation)"), (cx, rate, f"train {unit}s / s")):
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
    """Evaluate an already-trained run of ours on the data the peer was measured on (the
    run's preset prepared as ``oasisvq train`` prepares it); training figures from its
    history."""
    if args.threads:
        torch.set_num_threads(args.threads)
    run = oasisvq.load(args.ours_run, args.device)
    model, device = run.vqvae, run.device
    peer = preset_config(args.preset, args.volume_shape)
    if model.cfg.name != args.preset:
        print(
            f"warning: --ours-run is preset {model.cfg.name!r}, not {args.preset!r}",
            file=sys.stderr,
        )
    elif model.cfg.input_shape != peer.input_shape:
        print(
            f"warning: --ours-run takes inputs of {model.cfg.input_shape}, the peer "
            f"{peer.input_shape}",
            file=sys.stderr,
        )
    _, val = _data(args, data_options_for(model.cfg))
    history = json.loads((Path(args.ours_run) / "history.json").read_text())
    seconds = sum(r["epoch_seconds"] for r in history)
    images = sum(r["epoch_seconds"] * r["train_images_per_second"] for r in history)
    evaluated = _evaluate(model, val, device)
    code_grid, _ = _codes_checked(model, val, device, "ours")
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
        "eval": {**evaluated, "split": args.eval_split},
        "code_grid": code_grid,
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
    """ours / MONAI for the comparable figures (None where either is missing or 0); the
    brain-mask measures of volumes where both have them."""

    def r(a: float | None, b: float | None) -> float | None:
        return None if a is None or b in (None, 0) else a / b

    a, b = ours["eval"], monai["eval"]
    brain = [k for k in ("ssim_brain", "psnr_brain") if f"{k}_mean" in a and f"{k}_mean" in b]
    return {
        **{k: r(a[f"{k}_mean"], b[f"{k}_mean"]) for k in ("ssim", "ms_ssim", "psnr", *brain)},
        "codes_used": r(a["codes_used"], b["codes_used"]),
        "train_images_per_second": r(
            ours["train"]["images_per_second"], monai["train"]["images_per_second"]
        ),
        "eval_images_per_second": r(a.get("images_per_second"), b.get("images_per_second")),
        "train_peak_rss": r(ours["train"]["peak_rss_mib"], monai["train"]["peak_rss_mib"]),
        "params": r(ours["params"], monai["params"]),
    }


def _notes(cfg: VQVAEConfig) -> list[str]:
    notes = [
        "same Engine, TrainConfig, loss (the preset's reconstruction loss + each model's own "
        "quantization loss), batches and order for both models; each trained in its own process",
        "images_per_second is wall clock over the whole budget (first steps included); "
        "images_per_second_after_warmup leaves out --warmup-steps steps; on a shared CPU "
        "images_per_cpu_second * threads estimates the rate on idle cores",
        "peak_rss_mib of train: the process's ru_maxrss after training (data cache pages included)",
    ]
    if cfg.dims == 3:
        notes.append(
            "3D: an image is a whole volume (data_options: as `oasisvq train` prepares them "
            "for the preset); SSIM and MS-SSIM are 3D, *_brain inside the brain mask; the "
            f"training volumes' random changes (augment={cfg.augment}) come from a stream "
            "of their own, the same for both models; channels-last off"
        )
    return notes


def _parser() -> argparse.ArgumentParser:
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
    p.add_argument(
        "--volume-shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="3D presets: crop volumes to this shape and build both models for it "
        "(default: the preset's)",
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
        choices=SHAPES,
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
    return p


def _shown(ours: dict, monai_result: dict) -> dict:
    """The headline figures of both models, for the terminal."""
    shown = {}
    for who, r in (("ours", ours), ("monai", monai_result)):
        e = r["eval"]
        shown[who] = {
            "ssim": round(e["ssim_mean"], 4),
            "psnr": round(e["psnr_mean"], 2),
            **({"ssim_brain": round(e["ssim_brain_mean"], 4)} if "ssim_brain_mean" in e else {}),
            "codes_used": e["codes_used"],
            "train_img_s": r["train"]["images_per_second"],
            "eval_img_s": e.get("images_per_second"),
            "steps": r["train"].get("steps"),
            "rss_mib": r["train"]["peak_rss_mib"],
        }
    return shown


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    try:
        cfg = preset_config(args.preset, args.volume_shape)
    except ConfigError as e:
        p.error(str(e))

    if args.worker:
        result = train_and_measure(args, args.worker)
        save_result(result, args.worker_out)
        return 0

    command = command_line()
    if args.ours_run:  # the workers' arguments: all but --ours-run
        argv = [a for a in argv if not a.startswith("--ours-run=")]
        if "--ours-run" in argv:
            i = argv.index("--ours-run")
            del argv[i : i + 2]
    monai_result = _worker(args, "monai", argv)
    ours = measure_ours_run(args) if args.ours_run else _worker(args, "ours", argv)
    result = {
        "benchmark": "monai_peer",
        "preset": args.preset,
        "data": args.data,
        "dims": cfg.dims,
        "unit": "volume" if cfg.dims == 3 else "image",
        "data_options": data_options_for(cfg).to_dict(),
        "budget": {"minutes": args.minutes} if args.minutes else {"epochs": args.epochs},
        "monai_shape": args.monai_shape,
        "train_limit": args.limit,
        "eval_split": args.eval_split,
        "eval_limit": args.eval_limit,
        "monai": monai.__version__,
        "ours": ours,
        "peer": monai_result,
        "ratios_ours_over_monai": _ratios(ours, monai_result),
        "notes": _notes(cfg),
        "command": command,
        "machine": machine_info(),
    }
    save_result(result, args.out, plot)
    print(json.dumps(_shown(ours, monai_result)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
