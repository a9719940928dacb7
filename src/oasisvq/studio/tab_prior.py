"""The Sample and Surprise tabs: new images from a prior, each one's nearest training
image, a ZIP of them; and the per-cell surprise of an image's codes under a prior."""

from __future__ import annotations

import math
import uuid

import gradio as gr
import numpy as np

from oasisvq.studio import backend, render
from oasisvq.studio.page import Page, condition_inputs, condition_updates, conditions, guarded, need

NO_PRIOR = "This run has no prior yet: `oasisvq train-prior RUN --prior transformer` trains one."


def _prior_choice(page: Page, prefix: str) -> gr.Dropdown:
    names = page.priors()
    return page.add(
        gr.Dropdown(
            names, value=names[-1] if names else None, label="prior", elem_id=f"{prefix}-prior"
        )
    )


def sample_tab(page: Page, demo: gr.Blocks) -> None:
    with gr.Tab("Sample", id="sample"):
        if not page.priors():
            gr.Markdown(NO_PRIOR)
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                prior = _prior_choice(page, "sample")
                conds = condition_inputs(page, "sample")
                knobs = [
                    page.add(
                        gr.Slider(
                            0, 4, value=1, step=0.1, label="guidance (1: none)", elem_id="guidance"
                        )
                    ),
                    page.add(
                        gr.Slider(
                            0, 2, value=1, step=0.05, label="temperature", elem_id="temperature"
                        )
                    ),
                    page.add(
                        gr.Number(
                            0, precision=0, minimum=0, label="top-k (0: all codes)", elem_id="top-k"
                        )
                    ),
                    page.add(gr.Number(0, precision=0, label="seed", elem_id="seed")),
                    page.add(
                        gr.Slider(
                            1,
                            backend.MAX_SAMPLES,
                            value=16,
                            step=1,
                            label="samples",
                            elem_id="count",
                        )
                    ),
                ]
                go = page.add(gr.Button("Sample", variant="primary", elem_id="sample-btn"))
            with gr.Column(scale=3):
                gallery = page.gallery("samples", "samples", 8)
                with gr.Row():
                    nearest = page.add(
                        gr.Button(
                            "Nearest training image of the selected sample", elem_id="nearest-btn"
                        )
                    )
                    page.add(gr.Button("Edit the selected sample", elem_id="edit-sample-btn"))
                    download = page.add(
                        gr.DownloadButton("Download ZIP", elem_id="zip", interactive=False)
                    )
                with gr.Row():
                    near_image = page.image("nearest-image", "nearest training image")
                    near_text = page.add(gr.Markdown(elem_id="nearest-text"))

    @guarded
    def draw(name, cls, pos, age, sex, guidance, temperature, top_k, seed, n) -> list:
        s = backend.sample(
            page.st,
            int(n),
            name,
            conditions(cls, pos, age, sex),
            float(guidance),
            float(temperature),
            int(top_k or 0),
            None if seed is None else int(seed),
        )
        shown = [(page.png(im), f"{i}") for i, im in enumerate(s.images)]
        return [shown, s, None, gr.update(value=None, interactive=False)]

    @guarded
    def zip_samples(s: backend.Samples | None):
        path = page.output("exports", f"samples-{uuid.uuid4().hex[:8]}.zip")
        return gr.update(value=str(backend.export_zip(need(s, "sample"), path)), interactive=True)

    @guarded
    def nearest_of(s: backend.Samples | None, i: int | None) -> list:
        image = need(s, "sample").images[need(i, "click a sample")]
        idx, score, found = backend.nearest_training(page.st, image)
        return [page.png(found), f"training image #{idx}: SSIM **{score:.3f}** to sample {i}"]

    def select(evt: gr.SelectData) -> int:
        return int(evt.index)

    outputs = [gallery, page.samples, page.selected, download]
    go.click(draw, [prior, *conds, *knobs], outputs, concurrency_id="model").then(
        zip_samples, page.samples, download
    )
    gallery.select(select, None, page.selected)
    nearest.click(
        nearest_of, [page.samples, page.selected], [near_image, near_text], concurrency_id="model"
    )
    _wire_conditions(page, demo, prior, conds, knobs[0])


def _wire_conditions(page: Page, demo: gr.Blocks, prior, conds: list, guidance=None) -> None:
    """Show the condition inputs (and guidance) that the chosen prior takes."""

    @guarded
    def update(name: str | None) -> list:
        out = condition_updates(page, name)
        if guidance is not None:
            ok = bool(name) and backend.prior_info(page.st, name).guidance
            out.append(gr.update(interactive=ok, value=1))
        return out

    targets = [*conds, guidance] if guidance is not None else conds
    prior.change(update, prior, targets)
    demo.load(update, prior, targets)


# --------------------------------------------------------------------------- surprise

SOURCES = ["the Reconstruct tab's image", "the Edit tab's grid", "the selected sample"]


def _source(
    page: Page, which: str, current, edit, samples, selected
) -> tuple[np.ndarray, np.ndarray]:
    """The image ``(S, S)`` and codes ``(h, w)`` that the surprise map is asked for."""
    if which == SOURCES[1]:
        e = need(edit, "load a grid in the Edit tab")
        return e["image"], e["codes"]
    if which == SOURCES[2]:
        s = need(samples, "sample")
        i = need(selected, "click a sample")
        return s.images[i], s.codes[i]
    c = need(current, "show an image in the Reconstruct tab")
    return c["image"], c["codes"]


def surprise_tab(page: Page, demo: gr.Blocks) -> None:
    with gr.Tab("Surprise", id="surprise"):
        gr.Markdown(
            "How unlikely each cell's code is under the prior, given the cells before it "
            "(its negative log-likelihood, as in Pinaya et al., 2022): bright cells are what "
            "the prior finds unusual in the image."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                which = page.add(
                    gr.Radio(SOURCES, value=SOURCES[0], label="of", elem_id="surprise-source")
                )
                prior = _prior_choice(page, "surprise")
                conds = condition_inputs(page, "surprise")
                go = page.add(
                    gr.Button("Show the surprise map", variant="primary", elem_id="surprise-btn")
                )
            with gr.Column(scale=3):
                heat = page.image("surprise-map", "surprise over the image")
                text = page.add(gr.Markdown(elem_id="surprise-text"))

    @guarded
    def show(src, current, edit, samples, selected, name, cls, pos, age, sex) -> list:
        image, codes = _source(page, src, current, edit, samples, selected)
        s = backend.surprise(page.st, codes, name, conditions(cls, pos, age, sex))
        per_cell = math.log2(page.st.codebook_size)
        order = np.argsort(-s.bits, axis=None)[:3]
        top = ", ".join(
            f"({r}, {c}) {s.bits[r, c]:.1f}"
            for r, c in zip(*np.unravel_index(order, s.bits.shape), strict=True)
        )
        md = (
            f"NLL **{s.total_bits:.1f} bits** (a uniform prior: {s.uniform_bits:.0f}); "
            f"most surprising cells (row, column) bits: {top}. Colour: black 0 to yellow "
            f"{2 * per_cell:.1f} bits per cell or more."
        )
        return [page.png(render.heat_overlay(image, s.heat, 2 * per_cell)), md]

    inputs = [which, page.current, page.edit, page.samples, page.selected, prior, *conds]
    go.click(show, inputs, [heat, text], concurrency_id="model")
    _wire_conditions(page, demo, prior, conds)
