"""What the Studio's tabs share: the per-browser state, component helpers, the condition
inputs of a prior, error messages on the page, and the small Training tab."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from oasisvq.errors import ConfigError, DataError, OasisError
from oasisvq.studio import backend, render

UNKNOWN = "(unknown)"
KEEP_S = 3600  # files the page made are removed after an hour


@dataclass
class Page:
    """The run, the page's folder, per-browser state and the components by ``elem_id``.

    State (one copy per browser): ``current`` the image of the Reconstruct tab
    (``{"image": (S, S) uint8, "codes": (h, w), "label": str}``), ``samples`` the last
    ``backend.Samples``, ``selected`` the index of the sample clicked in the gallery,
    ``edit`` the Edit tab's grid (``{"codes", "mask", "before", "anchor"}``)."""

    st: backend.Studio
    workdir: Path
    current: gr.State
    samples: gr.State
    selected: gr.State
    edit: gr.State
    tabs: gr.Tabs | None = None
    ui: dict = field(default_factory=dict)
    purged: dict[str, float] = field(default_factory=dict)  # folder -> last clean-up

    @classmethod
    def create(cls, st: backend.Studio, workdir: Path) -> Page:
        return cls(st, workdir, gr.State(None), gr.State(None), gr.State(None), gr.State(None))

    def add(self, component):
        """Register ``component`` under its ``elem_id`` (tests and other tabs find it there)."""
        self.ui[component.elem_id] = component
        return component

    def image(self, elem_id: str, label: str, **kw) -> gr.Image:
        """An output image, sent as PNG (lossless: these are measurements)."""
        kw.setdefault("interactive", False)
        kw.setdefault("height", 280)
        kw.setdefault("elem_classes", "studio-image")  # shown enlarged, pixels kept sharp
        return self.add(gr.Image(label=label, elem_id=elem_id, type="filepath", **kw))

    def button(self, elem_id: str, label: str, primary: bool = False) -> gr.Button:
        variant = "primary" if primary else "secondary"
        return self.add(gr.Button(label, variant=variant, elem_id=elem_id))

    def slider(self, elem_id: str, label: str, lo: float, hi: float, value: float, step=1.0):
        return self.add(gr.Slider(lo, hi, value=value, step=step, label=label, elem_id=elem_id))

    def integer(self, elem_id: str, label: str, value: int = 0) -> gr.Number:
        return self.add(gr.Number(value, precision=0, label=label, elem_id=elem_id))

    def prior_choice(self, prefix: str) -> gr.Dropdown:
        """The run's priors, the newest chosen."""
        names = self.priors()
        newest = names[-1] if names else None
        return self.add(gr.Dropdown(names, value=newest, label="prior", elem_id=f"{prefix}-prior"))

    def gallery(self, elem_id: str, label: str, columns: int, **kw) -> gr.Gallery:
        """Output images in a grid; a click selects one (no enlarged preview)."""
        return self.add(
            gr.Gallery(label=label, columns=columns, allow_preview=False, elem_id=elem_id, **kw)
        )

    def png(self, image: np.ndarray) -> str:
        """``image`` (``(H, W)`` or ``(H, W, 3)``, uint8 or float in [0, 1]) as a PNG file of
        its own, for an output. Gradio's own caching of arrays names a file by its pixels
        and rewrites it in place, so a browser fetching the same pixels meanwhile gets a
        truncated file; a new file per image avoids it (Gradio copies files atomically)."""
        path = self.output("png", f"{uuid.uuid4().hex}.png")
        Image.fromarray(render.as_uint8(image)).save(path)
        return str(path)

    def output(self, folder: str, name: str) -> Path:
        """A path in ``folder`` of the page's folder for a file the page writes; the
        folder's files older than ``KEEP_S`` go (Gradio removes only its own copies)."""
        root = self.workdir / folder
        root.mkdir(exist_ok=True)
        now = time.time()
        if now - self.purged.get(folder, 0.0) > KEEP_S / 6:  # look every 10 minutes at most
            self.purged[folder] = now
            for old in root.iterdir():
                with contextlib.suppress(FileNotFoundError):  # another thread was first
                    if now - old.stat().st_mtime > KEEP_S:
                        old.unlink()
        return root / name

    def priors(self) -> list[str]:
        return backend.prior_names(self.st)


def guarded(fn):
    """Turn the errors a user can act on into a message on the page (a toast), leaving
    the outputs as they were; the server goes on."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (OasisError, ValueError) as exc:
            gr.Warning(str(exc))
            return gr.skip()

    return run


def upload_path(page: Page, path: str) -> str:
    """Gradio hands over files it stored in the page's folder; refuse anything else."""
    real = os.path.realpath(path)
    if not real.startswith(os.path.realpath(page.workdir) + os.sep):
        raise DataError(path, "uploads are read from the page's own folder only")
    return real


VOLUME_TYPES = [".nii", ".gz", ".hdr", ".img"]  # a NIfTI file, or an Analyze pair


def upload_volume(page: Page, paths: str | list[str] | None) -> tuple[str, str] | None:
    """The newest volume in an upload box as ``(path, name)``: its last file when that is
    NIfTI, or its last two when they are an Analyze ``.hdr`` and ``.img`` of one stem (as
    OASIS ships them). A box of several files keeps every upload, oldest first. Gradio
    keeps each file in a folder of its own, so a pair is first put side by side."""
    if not paths:
        return None
    given = [paths] if isinstance(paths, str) else list(paths)
    names = [os.path.basename(p) for p in given]
    if os.path.splitext(names[-1])[1].lower() not in (".hdr", ".img"):
        return upload_path(page, given[-1]), names[-1]
    pair = sorted(zip(names[-2:], given[-2:], strict=True), key=lambda x: x[0].lower())
    stems, kinds = zip(*(os.path.splitext(n.lower()) for n, _ in pair), strict=True)
    if kinds != (".hdr", ".img") or len(set(stems)) != 1:
        raise DataError(names[-1], "upload one NIfTI file, or an Analyze .hdr with its .img")
    tag = uuid.uuid4().hex[:8]
    copies = [
        shutil.copyfile(upload_path(page, p), page.output("analyze", f"{tag}-{n}")) for n, p in pair
    ]
    return str(copies[0]), pair[0][0]


def selected_index(evt: gr.SelectData) -> int:
    """The index of the gallery item a click selected (for ``gallery.select``)."""
    return int(evt.index)


def need(value, what: str):
    """``value``, or a message on the page asking for ``what`` first."""
    if value is None:
        raise ConfigError(f"{what} first")
    return value


# --------------------------------------------------------------------------- conditions


def condition_inputs(page: Page, prefix: str) -> list:
    """Class, slice position, age and sex inputs (shown as the chosen prior takes them)."""
    return [
        page.add(gr.Dropdown([UNKNOWN], value=UNKNOWN, label="class", elem_id=f"{prefix}-class")),
        page.add(
            gr.Number(
                None, label="slice position 0..1 (empty: unknown)", elem_id=f"{prefix}-position"
            )
        ),
        page.add(gr.Number(None, label="age (empty: unknown)", elem_id=f"{prefix}-age")),
        page.add(
            gr.Dropdown([UNKNOWN, "F", "M"], value=UNKNOWN, label="sex", elem_id=f"{prefix}-sex")
        ),
    ]


def condition_updates(page: Page, prior: str | None) -> list:
    """Updates of ``condition_inputs`` for ``prior``: only what it was trained with shows."""
    if not prior:
        return [gr.update(visible=False)] * 4
    info = backend.prior_info(page.st, prior)
    shown = [k in info.conditions for k in backend.CONDITION_KEYS]
    classes = gr.update(choices=[UNKNOWN, *info.class_names], value=UNKNOWN, visible=shown[0])
    # an explicit None: a number box updated without a value shows and sends 0
    numbers = [gr.update(visible=s, value=None) for s in shown[1:3]]
    return [classes, *numbers, gr.update(visible=shown[3], value=UNKNOWN)]


def wire_conditions(
    page: Page, demo: gr.Blocks, prior, conds: list, guidance=None, guided: float = 1.0
) -> None:
    """Show the condition inputs (and let guidance move, from ``guided``) as the chosen
    prior takes them."""

    @guarded
    def update(name: str | None) -> list:
        out = condition_updates(page, name)
        if guidance is not None:
            ok = bool(name) and backend.prior_info(page.st, name).guidance
            out.append(gr.update(interactive=ok, value=guided if ok else 1))
        return out

    targets = [*conds, guidance] if guidance is not None else conds
    prior.change(update, prior, targets)
    demo.load(update, prior, targets)


def conditions(cls: str, position: float | None, age: float | None, sex: str) -> dict:
    """The inputs' values as backend conditions (unknown ones left out)."""
    out = {"class": cls, "position": position, "age": age, "sex": sex}
    return {k: v for k, v in out.items() if v not in (None, "", UNKNOWN)}


def sampling_inputs(
    page: Page, suffix: str = "", guidance: tuple = (4, 1, 0.1), count: tuple = (64, 16, "samples")
) -> list:
    """A Sample tab's guidance ``(max, value, step)``, temperature, top-k, seed, count
    ``(max, value, label)`` and scan-texture inputs, in the order :func:`sampling` takes
    them. The texture box is live only when the run has one fitted."""
    top, value, step = guidance
    most, n, label = count
    fitted = backend.has_texture(page.st)
    hint = "scan texture" if fitted else "scan texture (fit one: oasisvq fit-texture RUN)"
    return [
        page.slider(f"guidance{suffix}", "guidance (1: none)", 0, top, value, step),
        page.slider(f"temperature{suffix}", "temperature", 0, 2, 1, 0.05),
        page.integer(f"top-k{suffix}", "top-k (0: all codes)"),
        page.integer(f"seed{suffix}", "seed"),
        page.slider(f"count{suffix}", label, 1, most, n),
        page.add(gr.Checkbox(False, label=hint, interactive=fitted, elem_id=f"texture{suffix}")),
    ]


def sample_controls(page: Page, prefix: str, suffix: str = "", **knobs) -> tuple:
    """A Sample tab's left column: the prior, its conditions, :func:`sampling_inputs`
    (``knobs`` passed on) and the button; returns ``(prior, conditions, knobs, button)``."""
    prior = page.prior_choice(prefix)
    conds = condition_inputs(page, prefix)
    inputs = sampling_inputs(page, suffix, **knobs)
    return prior, conds, inputs, page.button(f"{prefix}-btn", "Sample", primary=True)


def sampling(name, cls, pos, age, sex, guidance, temperature, top_k, seed, n, texture) -> dict:
    """A Sample tab's inputs as the keyword arguments of ``backend.sample``."""
    return {
        "n": int(n),
        "prior": name,
        "conditions": conditions(cls, pos, age, sex),
        "guidance": float(guidance),
        "temperature": float(temperature),
        "top_k": int(top_k or 0),
        "seed": None if seed is None else int(seed),
        "texture": bool(texture),
    }


# --------------------------------------------------------------------------- training


def _curves(page: Page, which: str, keys: list[str]) -> pd.DataFrame:
    rows = backend.training_history(page.st).get(which, [])
    long = [
        {"epoch": r.get("epoch", i + 1), "value": r[k], "series": k}
        for i, r in enumerate(rows)
        for k in keys
        if k in r and math.isfinite(r[k])
    ]
    return pd.DataFrame(long, columns=["epoch", "value", "series"])


def _metric_choices(page: Page, which: str):
    rows = backend.training_history(page.st).get(which, [])
    keys = [k for k in (rows[0] if rows else {}) if k != "epoch"]
    default = [k for k in keys if k.endswith("loss")][:2] or keys[:1]
    return gr.update(choices=keys, value=default)


def _evaluation_markdown(page: Page) -> str:
    found = backend.evaluations(page.st)
    if not found:
        return "No evaluation yet: `oasisvq evaluate RUN --split test` writes one."
    keys = ("n_images", "ssim_mean", "ms_ssim_mean", "psnr_mean", "codes_used", "perplexity")
    lines = ["| evaluation | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, m in found.items():
        cells = [f"{m[k]:.4g}" if isinstance(m.get(k), float) else str(m.get(k, "-")) for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tab_training(page: Page) -> None:
    """The run's curves (its history, and its priors') and its evaluation summaries."""
    with gr.Tab("Training", id="training") as tab:
        runs = list(backend.training_history(page.st)) or ["vqvae"]
        with gr.Row():
            which = page.add(gr.Dropdown(runs, value=runs[0], label="run", elem_id="history-run"))
            keys = page.add(
                gr.Dropdown([], multiselect=True, label="curves", elem_id="history-metrics")
            )
        plot = page.add(
            gr.LinePlot(x="epoch", y="value", color="series", elem_id="curves", height=320)
        )
        summary = page.add(gr.Markdown(elem_id="eval-summary"))
    show = guarded(lambda w, k: _curves(page, w, k or []))
    tab.select(lambda: _evaluation_markdown(page), None, summary)
    tab.select(guarded(lambda w: _metric_choices(page, w)), which, keys)
    which.change(guarded(lambda w: _metric_choices(page, w)), which, keys)
    keys.change(show, [which, keys], plot)
