"""The Sample and Surprise tabs: new images from a prior, each one's nearest training
image, a ZIP of them; and the per-cell surprise of an image's codes under a prior."""

from __future__ import annotations

import math
import uuid

import gradio as gr
import numpy as np

from oasisvq.studio import backend, render
from oasisvq.studio.page import (
    Page,
    condition_inputs,
    conditions,
    guarded,
    need,
    sample_controls,
    sampling,
    selected_index,
    wire_conditions,
)

NO_PRIOR = "This run has no prior yet: `oasisvq train-prior RUN --prior transformer` trains one."


def sample_tab(page: Page, demo: gr.Blocks) -> None:
    with gr.Tab("Sample", id="sample"):
        if not page.priors():
            gr.Markdown(NO_PRIOR)
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                count = (backend.MAX_SAMPLES, 16, "samples")
                prior, conds, knobs, go = sample_controls(page, "sample", count=count)
            with gr.Column(scale=3):
                gallery = page.gallery("samples", "samples", 8)
                with gr.Row():
                    nearest = page.button(
                        "nearest-btn", "Nearest training image of the selected sample"
                    )
                    page.button("edit-sample-btn", "Edit the selected sample")
                    download = page.add(
                        gr.DownloadButton("Download ZIP", elem_id="zip", interactive=False)
                    )
                with gr.Row():
                    near_image = page.image("nearest-image", "nearest training image")
                    near_text = page.add(gr.Markdown(elem_id="nearest-text"))

    @guarded
    def draw(*inputs) -> list:
        s = backend.sample(page.st, **sampling(*inputs))
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

    outputs = [gallery, page.samples, page.selected, download]
    go.click(draw, [prior, *conds, *knobs], outputs, concurrency_id="model").then(
        zip_samples, page.samples, download
    )
    gallery.select(selected_index, None, page.selected)
    nearest.click(
        nearest_of, [page.samples, page.selected], [near_image, near_text], concurrency_id="model"
    )
    wire_conditions(page, demo, prior, conds, knobs[0])


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
                prior = page.prior_choice("surprise")
                conds = condition_inputs(page, "surprise")
                go = page.button("surprise-btn", "Show the surprise map", primary=True)
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
    wire_conditions(page, demo, prior, conds)
