"""Write docs/results.md, and README.md's results table, from benchmarks/results/*.json.

    python -m benchmarks.report

Every number comes from a result file; every table says once which machine and which
command produced it. In README.md only the lines between ``<!-- results:begin -->`` and
``<!-- results:end -->`` are replaced, and only when both markers are there.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.machine import cpu_label

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
NOT_MEASURED = "not measured"
# commands as a reader runs them: from the repository root, data in ~/data, runs in runs/
SHOWN = (
    (re.compile(r"^\S*python3?(?=\s)"), "python"),
    (re.compile(r"(?<=\s)benchmarks/(\w+)\.py(?=\s)"), r"-m benchmarks.\1"),
    (re.compile(r"(?<=\s)\S*/data/"), "~/data/"),
    (re.compile(r"(?<=\s)\S*/runs/"), "runs/"),
)


# a header, and the cell of one item: a format string over its fields, or a function
Column = tuple[str, str | Callable[[dict], object]]


@dataclass
class Table:
    title: str  # what a reader learns from the table
    setup: str  # what was measured, in one sentence
    sources: list[tuple[dict, str]]  # (machine, command)
    columns: list[Column]
    items: list[dict] = field(default_factory=list)  # one row each
    rows: list[list[object]] = field(default_factory=list)  # rows of their own, after them

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", self.setup, ""]
        machines: dict[str, list[str]] = {}
        for m, command in self.sources:
            shown = machines.setdefault(machine_label(m), [])
            if shown_command(command) not in shown:
                shown.append(shown_command(command))
        for label, shown in machines.items():
            what = "Command" if len(shown) == 1 else "Commands"
            lines += [f"Machine: {label}. {what}:", "", "```bash", *shown, "```", ""]
        lines += [_row([h for h, _ in self.columns]), _row(["---"] * len(self.columns))]
        rows = [[_cell(c, x) for _, c in self.columns] for x in self.items] + self.rows
        return "\n".join(lines + [_row(r) for r in rows])


def _cell(column: str | Callable[[dict], object], item: dict) -> object:
    return column.format(**item) if isinstance(column, str) else column(item)


def _row(cells: list[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def machine_label(m: dict) -> str:
    """``AMD EPYC (AVX2), 2 cores, 2 torch threads, torch 2.13.0+cpu``, with the GPU first
    on a machine that has one."""
    host = f"{cpu_label(m)}, {m['cpu_count']} cores, {m['torch_threads']} torch threads"
    gpu = f"{m['device']}, host " if m.get("device", "cpu") != "cpu" else ""
    return f"{gpu}{host}, torch {m['torch']}"


def shown_command(command: str) -> str:
    for pattern, replacement in SHOWN:
        command = pattern.sub(replacement, command)
    return command


def commands(r: dict) -> list[str]:
    """The command of a result (vqvae_quality results before it recorded its own: the
    train and evaluate commands it ran)."""
    return [r["command"]] if "command" in r else r["commands"]


def load(results: Path, pattern: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob(pattern))]


def _f(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _data_name(root: str | None) -> str:
    return "built-in MNI152" if root is None else Path(root).name


def _samples(rs: list[dict]) -> str:
    """The number of samples of prior evaluations (``a/b`` when they differ)."""
    return "/".join(sorted({str(r["setup"]["n_samples"]) for r in rs}, key=int)) or "no"


def _ratio(value: float, scale: float) -> str:
    return f"{value:.3f} ({value / scale:.1f}x)"


def _share(value: float) -> str:
    return f"{100 * value:.1f}%"


def _spread(x: dict, key: str, then: str) -> str:
    """``mean ± std (then)`` of a sweep row's ``key``."""
    return f"{_pm(x[key], x[f'{key}_std'])} ({then.format(**x)})"


def _pm(value: float, std: float | None) -> str:
    return f"{value:.3f}" + ("" if std is None else f" ± {std:.3f}")


def _sources(results: list[dict]) -> list[tuple[dict, str]]:
    return [(r["machine"], c) for r in results for c in commands(r)]


def _device(m: dict, devices: list[str]) -> str:
    """The GPU's name when the benchmark ran on CUDA, else the CPU's."""
    return m["device"] if any(d.startswith("cuda") for d in devices) else cpu_label(m)


def _run_label(setup: dict) -> str:
    """A VQ-VAE run by its preset, and whether its decoder was trained further."""
    label = f"`{setup['preset']}`"
    if setup.get("decoder_finetune"):
        label += f", decoder fine-tuned (adversarial weight {setup['adversarial_weight']:g})"
    return label


def _by_run(samples: list[dict]) -> list[dict]:
    """Prior evaluations by preset, the run's own decoder first, then by likelihood."""
    return sorted(
        samples,
        key=lambda r: (
            r["setup"]["preset"],
            bool(r["setup"].get("decoder_finetune")),
            r["likelihood"]["nll_bits_per_image"],
        ),
    )


def _quantizer(r: dict) -> str:
    """``VQ`` (a learnt codebook) or ``FSQ`` with its levels; results written before the
    field existed were all VQ."""
    q = r.get("quantizer", {"kind": "vq"})
    return "FSQ " + "x".join(map(str, q["levels"])) if q["kind"] == "fsq" else "VQ"


# ---------------------------------------------------------------- the tables
def quality(results: Path) -> Iterator[Table]:
    rs = sorted(
        load(results, "quality-*.json"), key=lambda r: (r["bits_per_image"], r["ssim_mean"])
    )
    yield Table(
        "How much of a held-out slice each preset keeps, and in how many bytes",
        "Each preset trained with `oasisvq train` for the epochs given and measured with "
        "`oasisvq evaluate` (reconstruction through the quantizer) on the held-out split; "
        "training minutes add up the epochs' training steps (validation after each epoch "
        "and checkpoints not included). VQ learns a codebook; FSQ rounds each latent "
        "channel to the levels given, at the same bits per image as its VQ preset.",
        _sources(rs),
        [
            ("preset", "`{preset}`"),
            ("quantizer", _quantizer),
            ("grid, codes", "{grid}x{grid}, {codebook_size}"),
            ("bytes/image", "{bytes_per_image:g}"),
            ("codes used", "{codes_used}"),
            ("SSIM", lambda r: _pm(r["ssim_mean"], r["ssim_std"])),
            ("MS-SSIM", "{ms_ssim_mean:.3f}"),
            ("PSNR (dB)", "{psnr_mean:.2f}"),
            ("epochs", "{epochs}"),
            ("s/epoch", "{train_seconds_per_epoch:.0f}"),
            ("training min", "{train_minutes_total:.1f}"),
            (
                "data, split (images)",
                lambda r: f"{_data_name(r['data'])}, {r['split']} ({r['n_images']})",
            ),
        ],
        rs,
    )


def priors(results: Path) -> Iterator[Table]:
    rs = _by_run(load(results, "samples-*.json"))
    yield Table(
        "What each prior generates: likelihood, fidelity, memorisation and diversity",
        "`oasisvq evaluate-samples` on the held-out split: NLL of its code grids (beside the "
        "uniform bound; a conditional prior also given a wrong and an unknown condition), "
        f"{_samples(rs)} samples (a conditional prior's conditions drawn from the training "
        "split) against the real images in the run's feature network, and the distance of "
        "training reconstructions, the floor a perfect prior would reach.",
        _sources(rs),
        [
            ("VQ-VAE run", lambda r: _run_label(r["setup"])),
            ("prior", _prior_label),
            ("training min (epochs)", _prior_training),
            ("condition", _condition),
            ("guidance", "{setup[sampling][guidance]:g}"),
            (
                "NLL bits/image (uniform)",
                "{likelihood[nll_bits_per_image]:.1f} ({likelihood[uniform_bits_per_image]:.0f})",
            ),
            ("NLL wrong / unknown condition", _wrong_condition),
            (
                "FD (x real-vs-real)",
                lambda r: _ratio(r["frechet"]["samples"], r["frechet"]["real_vs_real"]),
            ),
            (
                "FD of a perfect prior",
                lambda r: _f(r["frechet"].get("real_vs_train_reconstructions")),
            ),
            ("NN-SSIM", "{memorisation[nn_ssim_mean]:.3f}"),
            ("memorised", lambda r: _share(r["memorisation"]["memorised_share"])),
            ("diversity samples / real", "{diversity[samples]:.3f} / {diversity[real]:.3f}"),
        ],
        rs,
    )


def _prior_label(r: dict) -> str:
    """The prior's name and, for a masked prior, the parallel steps it was drawn in, its
    precision and the choice temperature when the sampling options set one."""
    setup = r["setup"]
    if setup.get("prior_arch") != "maskgit":
        return f"`{setup['prior']}`"
    how = [setup["sampling"]["precision"]]
    if setup["sampling"].get("choice_temperature") is not None:
        how.append(f"choice temperature {setup['sampling']['choice_temperature']:g}")
    return f"`{setup['prior']}`, {setup['steps']} steps ({', '.join(how)})"


def _prior_training(r: dict) -> str:
    setup = r["setup"]
    if "prior_train_minutes" not in setup:
        return "-"
    return "{prior_train_minutes:.1f} ({prior_epochs})".format(**setup)


def _condition(r: dict) -> str:
    """The conditions and, for transformers, where they enter (results written before
    ``cond_at`` existed had them in the start token only)."""
    setup = r["setup"]
    names = ", ".join(setup["condition"]) or "none"
    if not setup["condition"] or setup.get("prior_arch") == "pixelcnn":
        return names
    return f"{names} (at {setup.get('cond_at') or 'start'})"


def _wrong_condition(r: dict) -> str:
    lik = r["likelihood"]
    if "nll_bits_per_image_wrong_condition" not in lik:
        return "-"
    wrong, unknown = (lik[f"nll_bits_per_image_{k}_condition"] for k in ("wrong", "unknown"))
    return f"{wrong:.1f} / {unknown:.1f}"


def sweeps(results: Path) -> Iterator[Table]:
    for r in load(results, "sweep-*.json"):
        swept = [
            k for k in ("temperature", "top_k", "guidance") if len({x[k] for x in r["rows"]}) > 1
        ]
        yield Table(
            f"Choosing the {' and '.join(swept) or 'sampling settings'} of `{r['prior']}` on "
            f"{_run_label(r)}: fidelity against diversity",
            f"{r['n_samples']} samples per draw measured on {r['split']}, mean ± std over "
            f"{len(r['seeds'])} draws; real-vs-real FD {r['frechet_distance_real_vs_real']:.3f}, "
            f"real diversity {r['diversity_ms_ssim_real']:.3f}.",
            _sources([r]),
            [
                ("temperature", "{temperature:g}"),
                ("top-k", lambda x: x["top_k"] or "-"),
                ("guidance", "{guidance:g}"),
                (
                    "FD (x real-vs-real)",
                    lambda x: _spread(x, "frechet_distance", "{fd_ratio:.1f}x"),
                ),
                (
                    "diversity (gap)",
                    lambda x: _spread(x, "diversity_ms_ssim_samples", "{diversity_gap:+.3f}"),
                ),
                ("NN-SSIM", "{nn_ssim_mean:.3f}"),
                ("memorised", lambda x: _share(x["memorised_share"])),
            ],
            r["rows"],
        )


def blur(results: Path) -> Iterator[Table]:
    for r in load(results, "fd_blur-*.json"):
        scale = r["frechet_distance_real_vs_real"]
        yield Table(
            "What blur alone does to the Fréchet distance: the scale to read a sample's against",
            f"The `{r['preset']}` run's feature network: {r['split']} against "
            f"{r['n_reference']} real training slices blurred by a Gaussian of sigma pixels.",
            _sources([r]),
            [
                ("sigma (px)", "{sigma:g}"),
                ("FD (x real-vs-real)", lambda x, s=scale: _ratio(x["frechet_distance"], s)),
            ],
            r["rows"],
        )


def _smallest_reaching(rows: list[dict], ssim: float) -> str:
    """The smallest setting of a codec sweep whose mean SSIM reaches ``ssim``."""
    ok = [x for x in rows if x["ssim_mean"] >= ssim]
    best = min(ok, key=lambda x: x["bytes_mean"]) if ok else None
    return "not reached" if best is None else "{bytes_mean:.0f} ({psnr_mean:.1f})".format(**best)


def _prior_bytes(run: dict) -> str:
    return (
        ", ".join("{nll_bytes_per_image:.1f} ({prior})".format(**p) for p in run["priors"]) or "-"
    )


def rate_distortion(results: Path) -> Iterator[Table]:
    for r in load(results, "rate_distortion*.json"):
        size, codecs = r["data_options"]["size"], r["codecs"]
        columns: list[Column] = [
            ("VQ-VAE run", "`{preset}`, {codebook_size} codes"),
            ("bytes/image (codes)", "{bytes_per_image:.0f}"),
            *([("prior NLL bytes", _prior_bytes)] if any(x["priors"] for x in r["runs"]) else []),
            ("SSIM", "{ssim_mean:.3f}"),
            ("PSNR (dB)", "{psnr_mean:.2f}"),
        ]
        for c, sweep in codecs.items():
            columns.append(
                (
                    f"{c} bytes at that SSIM (PSNR)",
                    lambda x, s=sweep: _smallest_reaching(s, x["ssim_mean"]),
                )
            )
        smallest = [min(sweep, key=lambda x: x["bytes_mean"]) for sweep in codecs.values()]
        yield Table(
            "Bytes per image: the VQ-VAE's codes beside JPEG, WebP and JPEG 2000 at the same SSIM",
            f"{_data_name(r['data'])}, {r['split']}, {r['n_images']} images at {size}x{size}; "
            "codec bytes are mean real file sizes at the smallest setting of the sweep whose "
            f"mean SSIM reaches the run's (Pillow {r['pillow']}, OpenJPEG {r['openjpeg']}, "
            f"libwebp {r['libwebp']}).",
            [(r["machine"], r["command"])]
            + [(k["machine"], k["command"]) for x in r["runs"] if (k := x.get("kept_from"))],
            columns,
            r["runs"],
            [
                ["smallest file of each codec"]
                + [""] * (len(columns) - len(codecs) - 1)
                + ["{bytes_mean:.0f} B at SSIM {ssim_mean:.3f}".format(**x) for x in smallest]
            ],
        )


def monai(results: Path) -> Iterator[Table]:
    rs = load(results, "monai_*.json")
    models = []  # one row per model: its own fields and those of its pair
    for r in sorted(rs, key=lambda r: (r["preset"], r["monai_shape"], str(r["budget"]))):
        b, q = r["budget"], r["ratios_ours_over_monai"]
        beta2 = r["peer"]["train"]["config"]["adam_beta2"]  # the pair's optimiser setting
        budget = f"{b['minutes']:g} min" if "minutes" in b else f"{b['epochs']} epoch(s)"
        pair = {"preset": r["preset"], "budget": f"{budget}, AdamW β2 {beta2:g}"}
        models.append({**r["ours"], **pair, "label": "ours", "ratio": ""})
        models.append(
            {**r["peer"], **pair, "label": f"MONAI {r['monai']}, {r['monai_shape']} widths"}
            | {"ratio": f"SSIM x{_f(q['ssim'])}, speed x{_f(q['train_images_per_second'], '.2f')}"}
        )
    yield Table(
        "Ours beside MONAI's VQ-VAE trained the same way for the same budget",
        "`monai.networks.nets.VQVAE` with the preset's grid and codebook (`spatial_dims` 2 "
        "for slices, 3 for whole volumes), at MONAI's default widths or the preset's own "
        "(matched), trained by this project's engine with the same loss, batches, "
        "augmentation and optimiser, each in its own process; both measured on the "
        "validation split (3D presets: whole volumes as `oasisvq train` prepares them, "
        "3D SSIM, an image is a volume).",
        _sources(rs),
        [
            ("preset", "`{preset}`"),
            ("budget", "{budget}"),
            ("model", "{label}"),
            ("params", lambda m: f"{m['params'] / 1e6:.2f} M"),
            ("SSIM", "{eval[ssim_mean]:.3f}"),
            ("PSNR (dB)", "{eval[psnr_mean]:.2f}"),
            ("codes used", "{eval[codes_used]}/{eval[codebook_size]}"),
            ("train img/s", lambda m: _f(m["train"]["images_per_second"], ".1f")),
            ("peak RSS (MiB)", lambda m: _f(m["train"]["peak_rss_mib"], ".0f")),
            ("ours / MONAI", "{ratio}"),
        ],
        models,
    )


def _rate(x: dict, part: str, key: str = "images_per_second") -> str:
    m = x.get(part, {})
    return _f(m.get(key), ".1f") if m.get("ok") else "failed"


def _memory(x: dict) -> str:
    """Peak resident memory, and the GPU's own peak during training."""
    gpu = x.get("train", {}).get("cuda_peak_allocated_mib")
    return _f(x.get("peak_rss_mib"), ".0f") + (f" (GPU {gpu:.0f})" if gpu else "")


def throughput(results: Path) -> Iterator[Table]:
    for r in load(results, "throughput*.json"):
        measured = {(x["preset"], x["variant"]): x for x in r["rows"]}
        wanted = [(p, v) for p in r["presets"] for v in r["variants"]]
        yield Table(
            f"Training and inference speed of each preset on {_device(r['machine'], r['devices'])}",
            f"Synthetic input, {r['timed_steps']} timed steps after {r['warmup_steps']} warm-up, "
            "each measurement in its own process.",
            _sources([r]),
            [
                ("preset", "`{preset}`"),
                ("variant", "{variant}"),
                ("train img/s", lambda x: _rate(x, "train")),
                ("train img/CPU-s", lambda x: _rate(x, "train", "images_per_cpu_second")),
                ("inference img/s", lambda x: _rate(x, "inference")),
                ("peak RSS (MiB)", _memory),
            ],
            [measured[k] for k in wanted if k in measured],
            [
                [f"`{p}`", v, NOT_MEASURED, "-", "-", "-"]
                for p, v in wanted
                if (p, v) not in measured
            ],
        )


def sampling_speed(results: Path) -> Iterator[Table]:
    for r in load(results, "sampling_speed*.json"):
        xs = r["results"]
        found = {(x["grid"], x["prior"]) for x in xs}
        grids = r.get("grids") or list(dict.fromkeys(x["grid"] for x in xs))
        names = r.get("priors") or list(dict.fromkeys(x["prior"] for x in xs))
        yield Table(
            f"How fast each prior draws images on {_device(r['machine'], [r['device']])}",
            "Codes drawn by untrained priors (the cost does not depend on the weights) and "
            "decoded to images by the named VQ-VAE.",
            _sources([r]),
            [
                ("prior", "`{prior}`"),
                ("grid, codes", "{grid}, {codebook_size}"),
                ("mode", "{mode}"),
                ("decoder", "`{vqvae}`"),
                (
                    "drawing / decoding",
                    lambda x: f"{x.get('draw_precision', 'fp32')} / {x['decode_precision']}",
                ),
                ("images", "{n}"),
                ("sampling s", "{sample_seconds:.2f}"),
                ("decoding s", "{decode_seconds:.2f}"),
                ("images/s", "{images_per_second:.1f}"),
                ("s per 1000", "{seconds_per_1000:.1f}"),
            ],
            xs,
            [
                [f"`{p}`", g, NOT_MEASURED] + ["-"] * 7
                for g in grids
                for p in names
                if (g, p) not in found
            ],
        )


def volumes(results: Path) -> Iterator[Table]:
    rs = sorted(load(results, "quality3d-*.json"), key=lambda r: r["bits_per_image"])
    yield Table(
        "Whole brains: how much of a held-out volume each 3D preset keeps",
        "Each 3D preset trained with `oasisvq train` for the epochs given and measured with "
        "`oasisvq evaluate` on the held-out subjects: SSIM-3D, MS-SSIM-3D and PSNR over the "
        "whole cropped volume, SSIM and PSNR inside the brain mask.",
        _sources(rs),
        [
            ("preset", "`{preset}`"),
            ("grid, codes", lambda r: f"{'x'.join(map(str, r['grid']))}, {r['codebook_size']}"),
            ("bytes/volume", "{bytes_per_image:g}"),
            ("codes used", "{codes_used}"),
            ("SSIM", lambda r: _pm(r["ssim_mean"], r["ssim_std"])),
            ("MS-SSIM", "{ms_ssim_mean:.3f}"),
            ("PSNR (dB)", "{psnr_mean:.2f}"),
            ("SSIM / PSNR in brain", "{ssim_brain_mean:.3f} / {psnr_brain_mean:.2f}"),
            ("epochs", "{epochs}"),
            ("s/epoch", "{train_seconds_per_epoch:.0f}"),
            (
                "data, split (volumes)",
                lambda r: f"{_data_name(r['data'])}, {r['split']} ({r['n_volumes']})",
            ),
        ],
        rs,
    )
    samples = load(results, "samples3d-*.json")
    yield Table(
        "Whole brains: what a prior conditioned on age and sex generates",
        "`oasisvq evaluate-samples` on a 3D run: NLL of the held-out code grids, samples drawn "
        "at the ages and sexes of random training subjects, their age and sex as predicted by "
        "a 3D network trained on the real training volumes (beside its accuracy on the real "
        "held-out volumes, the ceiling), memorisation, diversity and the Fréchet distance in "
        "that network's features. Memorised: the share of samples nearer a training volume "
        "(SSIM-3D) than the 99th percentile of real held-out volumes, with its Wilson 95% "
        "interval over the samples; in round brackets the share of the real held-out "
        "volumes themselves, each against the percentile of the others (what new real "
        "scans would score), the share among reconstructions (samples against decoded "
        "training volumes, threshold from decoded held-out ones), and the raw share the "
        "held-out volumes' own reconstructions reach (what a prior drawing new subjects "
        "perfectly would score: the decoder's smoothing alone moves a volume nearer the "
        "training set). Texture: samples drawn with the run's fitted scan texture "
        "(`--texture`), and in brackets the share of training volumes' own reconstructions, "
        "given the same texture, that the rule still flags as memorised. Diversity in "
        "brackets: the held-out volumes' reconstructions.",
        _sources(samples),
        [
            ("VQ-VAE run", lambda r: _run_label(r["setup"])),
            ("prior", _prior_label),
            ("training min (epochs)", _prior_training),
            ("condition", _condition),
            ("guidance", "{setup[sampling][guidance]:g}"),
            ("texture (copies caught)", _texture),
            ("samples", "{setup[n_samples]}"),
            (
                "NLL bits/volume (uniform)",
                "{nll_bits_per_image:.0f} ({uniform_bits_per_image:.0f})",
            ),
            ("age r (real)", "{age_correlation:.2f} ({age_correlation_real:.2f})"),
            ("age MAE, years (real)", "{age_mae:.1f} ({age_mae_real:.1f})"),
            ("sex accuracy (real)", "{sex_accuracy:.2f} ({sex_accuracy_real:.2f})"),
            ("memorised [95%] (real scans; recon. space; real recon.)", _memorised3d),
            ("diversity samples / real (recon.)", _diversity3d),
            (
                "FD (x real-vs-real)",
                lambda r: _ratio(r["frechet_distance"], r["frechet_distance_real_vs_real"]),
            ),
            ("s to draw", "{timing[sampling_seconds]:.0f}"),
        ],
        samples,
    )


def memorisation_floor(results: Path) -> Iterator[Table]:
    for r in load(results, "memorisation_floor-*.json"):
        textured = any(x["setup"].get("texture") for x in r["rows"])
        yield Table(
            "What a perfect prior would score as memorised, decoder by decoder"
            + (", with the scan texture drawn" if textured else ""),
            f"The {r['split']} split's own code grids of {_data_name(r['data'])}, decoded by "
            "each run and measured by the rule of `evaluate-samples`: the share nearer a "
            "training volume (SSIM) than the 99th percentile of the real held-out ones, with "
            f"its 95% interval over {r['n_held_out']}. The real held-out scans themselves, "
            "each against the percentile of the others, score "
            f"{_share(r['memorised_share_of_real'])}.",
            _sources([r]),
            [
                ("VQ-VAE run", lambda x: _run_label(x["setup"])),
                ("texture", lambda x: "on" if x["setup"].get("texture") else "off"),
                ("NN-SSIM decoded (real)", lambda x, r=r: _nn_pair(x, r)),
                ("memorised [95%]", _memorised3d_floor),
            ],
            r["rows"],
        )


def _nn_pair(x: dict, r: dict) -> str:
    return f"{x['nn_ssim_mean']:.3f} ({r['nn_ssim_real_mean']:.3f})"


def _memorised3d_floor(x: dict) -> str:
    return _memorised3d({"memorisation": x})


def _memorised3d(r: dict) -> str:
    """Raw share [95% interval], then (real scans; reconstruction space; the held-out
    reconstructions' raw share), each where the result has it."""
    m = r["memorisation"]
    out = _share(m["memorised_share"])
    if "memorised_share_ci95" in m:
        low, high = m["memorised_share_ci95"]
        out += f" [{100 * low:.1f}-{100 * high:.1f}]"
    keys = (
        "memorised_share_of_real",
        "memorised_share_recon_space",
        "memorised_share_of_real_reconstructions",
    )
    extra = [_share(m[k]) for k in keys if k in m]
    return out + (f" ({'; '.join(extra)})" if extra else "")


def _texture(r: dict) -> str:
    if not r["setup"]["sampling"].get("texture"):
        return "off"
    return f"on ({_share(r['memorisation']['memorised_share_of_textured_copies'])})"


def _diversity3d(r: dict) -> str:
    d = r["diversity"]
    out = f"{d['samples']:.3f} / {d['real']:.3f}"
    return out + (f" ({d['real_reconstructions']:.3f})" if "real_reconstructions" in d else "")


SECTIONS: tuple[Callable[[Path], Iterator[Table]], ...] = (
    quality,
    priors,
    volumes,
    memorisation_floor,
    sweeps,
    blur,
    rate_distortion,
    monai,
    throughput,
    sampling_speed,
)


def tables(results: Path) -> list[Table]:
    return [t for section in SECTIONS for t in section(results) if t.items or t.rows]


def summary(results: Path) -> str:
    """One table of the current presets (held-out reconstruction) and the priors measured
    on their codes, for README.md."""
    samples = _by_run(load(results, "samples-*.json"))
    qualities = sorted(
        load(results, "quality-*.json"), key=lambda r: (r["bits_per_image"], r["ssim_mean"])
    )
    rows = []
    for q in qualities:
        own = [s for s in samples if s["setup"]["preset"] == q["preset"]]
        preset = "`{preset}` | {bytes_per_image:g} | {ssim_mean:.3f} | {psnr_mean:.2f}".format(**q)
        rows.append(f"| {preset} | {NOT_MEASURED} | - | - | - | - |" if not own else None)
        for i, s in enumerate(own):
            decoder = ", fine-tuned decoder" if s["setup"].get("decoder_finetune") else ""
            fd = s["frechet"]["samples"] / s["frechet"]["real_vs_real"]
            minutes = s["setup"].get("prior_train_minutes")
            label = _prior_label(s) + ("" if minutes is None else f", {minutes:.1f} min")
            prior = (
                label + decoder + " | {likelihood[nll_bits_per_image]:.0f} | "
                f"{fd:.1f}x | {_share(s['memorisation']['memorised_share'])} | "
                "{diversity[samples]:.3f} / {diversity[real]:.3f}"
            ).format(**s)
            rows.append(f"| {preset if i == 0 else ' | | |'} | {prior} |")
    where = {f"{_data_name(q['data'])}, {q['split']} ({q['n_images']} slices)" for q in qualities}
    return "\n".join(
        [
            "| preset | bytes/image | SSIM | PSNR (dB) | prior | NLL bits/image "
            "| FD (x real-vs-real) | memorised | diversity samples / real |",
            "|---|---|---|---|---|---|---|---|---|",
            *filter(None, rows),
            "",
            f"Reconstruction on held-out {', '.join(sorted(where))}; priors on the same split "
            f"({_samples(samples)} samples each). Machines, commands and the other benchmarks: "
            "[docs/results.md](docs/results.md).",
        ]
    )


def write(results: Path, doc: Path, readme: Path | None) -> list[Table]:
    """Write ``doc`` from ``results`` (and the summary into ``readme`` between the
    markers, when it has them); returns the tables."""
    found = tables(results)
    head = [
        "# Results",
        "",
        "What every preset, prior and benchmark measured, with the machine and the command "
        "that produced each table: read them to choose a preset, a prior or a sampling "
        "setting, and rerun a command to check a number.",
        "",
        "Written by `python -m benchmarks.report` from `benchmarks/results/*.json`; commands "
        "are shown as run from the repository root, with the data in `~/data/` and trained "
        "runs in `runs/`.",
        "",
    ]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(head + ["\n\n".join(t.markdown() for t in found)]) + "\n")
    if readme is not None and readme.exists():
        text = readme.read_text()
        if BEGIN in text and END in text:
            before, rest = text.split(BEGIN, 1)
            after = rest.split(END, 1)[1]
            readme.write_text(f"{before}{BEGIN}\n{summary(results)}\n{END}{after}")
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = p.parse_args()
    found = write(args.results, args.out, args.readme)
    print(f"{args.out}: {len(found)} tables")


if __name__ == "__main__":
    main()
