"""The Reconstruct and Codes tabs: an image (from the run's data or uploaded) beside its
code grid, reconstruction and difference; the codebook and where each code occurs."""

from __future__ import annotations

import os

import gradio as gr
import numpy as np
import pandas as pd

from oasisvq.errors import ConfigError
from oasisvq.studio import backend, render
from oasisvq.studio.page import Page, guarded, need, upload_path

ANY = "(any)"
UPLOAD_TYPES = [".png", ".jpg", ".jpeg", ".nii", ".gz"]


def _present(page: Page, image: np.ndarray, label: str) -> list:
    """Outputs of the Reconstruct tab for ``image (S, S)`` uint8, and the new ``current``."""
    st = page.st
    r = backend.reconstruct(st, image)
    text = (
        f"**{render.escape(label)}** · SSIM **{r.ssim:.3f}** · PSNR **{r.psnr:.2f} dB** · "
        "difference: red where the reconstruction is brighter, blue where darker"
    )
    return [
        page.png(image),
        render.code_grid_html(r.codes, st.codebook_size),
        page.png(r.recon),
        page.png(render.diff_map(r.diff)),
        text,
        {"image": image, "codes": r.codes, "label": label},
    ]


def _filters(page: Page, split: str) -> list:
    found = backend.browse(page.st, split) if split else {"classes": [], "subjects": []}
    return [
        gr.update(choices=[ANY, *found["classes"]], value=ANY),
        gr.update(choices=[ANY, *found["subjects"]], value=ANY),
    ]


def _pick(page: Page, split: str, cls: str, subject: str) -> np.ndarray:
    idx = backend.find_images(page.st, split, _any(cls), _any(subject))
    if len(idx) == 0:
        raise ConfigError("no image of that class and subject in this split")
    return idx


def _any(value: str | None) -> str | None:
    return None if value in (None, "", ANY) else value


def reconstruct_tab(page: Page, demo: gr.Blocks) -> None:
    names = list(backend.splits(page.st))
    first = "validate" if "validate" in names else (names[0] if names else None)
    with gr.Tab("Reconstruct", id="reconstruct"):
        with gr.Row():
            with gr.Column(scale=1, min_width=240):
                split = page.add(gr.Dropdown(names, value=first, label="split", elem_id="split"))
                cls = page.add(gr.Dropdown([ANY], value=ANY, label="class", elem_id="class-filter"))
                subject = page.add(
                    gr.Dropdown([ANY], value=ANY, label="subject", elem_id="subject-filter")
                )
                index = page.slider("image-index", "image", 0, 1000, 0)
                show = page.button("recon-btn", "Reconstruct", primary=True)
                upload = page.add(
                    gr.File(
                        label="or upload a PNG/JPEG slice or a NIfTI volume (20 MB at most)",
                        file_types=UPLOAD_TYPES,
                        elem_id="upload",
                    )
                )
                piece = page.add(
                    gr.Slider(0, 1, step=1, label="slice", visible=False, elem_id="volume-slice")
                )
            with gr.Column(scale=3):
                with gr.Row():
                    outputs = [
                        page.image("recon-original", "original"),
                        page.add(gr.HTML(label="codes", elem_id="recon-codes")),
                        page.image("recon-output", "reconstruction"),
                        page.image("recon-diff", "difference"),
                    ]
                outputs.append(page.add(gr.Markdown(elem_id="recon-metrics")))
        volume = gr.State(None)  # inside the tab: a bare child of gr.Tabs breaks its tab bar
    outputs.append(page.current)
    _wire_reconstruct(
        page, demo, [split, cls, subject, index, show, upload, piece], volume, outputs
    )


def _wire_reconstruct(page: Page, demo, inputs: list, volume: gr.State, outputs: list) -> None:
    split, cls, subject, index, show, upload, piece = inputs

    @guarded
    def show_data(s: str, c: str, subj: str, i: float) -> list:
        idx = _pick(page, need(s, "choose a split"), c, subj)
        image, label = backend.data_image(page.st, s, int(idx[min(int(i), len(idx) - 1)]))
        return _present(page, image, label)

    def index_range(s: str, c: str, subj: str):
        n = len(backend.find_images(page.st, s, _any(c), _any(subj))) if s else 0
        return gr.update(maximum=max(n - 1, 0), value=n // 2)

    @guarded
    def on_upload(path: str | None) -> list:
        if not path:
            return [gr.skip()] * (len(outputs) + 2)
        up = backend.read_upload(page.st, upload_path(page, path), os.path.basename(path))
        n = len(up.images)
        slider = gr.update(visible=n > 1, maximum=max(n - 1, 1), value=n // 2)
        return [up, slider, *_present(page, up.images[n // 2], _upload_label(up, n // 2))]

    @guarded
    def on_slice(up: backend.Upload | None, k: float) -> list:
        up = need(up, "upload a volume")
        k = min(int(k), len(up.images) - 1)
        return _present(page, up.images[k], _upload_label(up, k))

    filters = guarded(lambda s: _filters(page, s))
    split.change(filters, split, [cls, subject])
    for box in (split, cls, subject):
        box.change(guarded(index_range), [split, cls, subject], index)
    show.click(show_data, [split, cls, subject, index], outputs, concurrency_id="model")
    upload.upload(on_upload, upload, [volume, piece, *outputs], concurrency_id="model").then(
        lambda: None,
        None,
        upload,  # empty again, success or not: ready for the next file
    )
    piece.release(on_slice, [volume, piece], outputs, concurrency_id="model")
    if split.value:  # the page opens on the middle image of the first split
        demo.load(filters, split, [cls, subject]).then(
            guarded(index_range), [split, cls, subject], index
        ).then(show_data, [split, cls, subject, index], outputs, concurrency_id="model")


def _upload_label(up: backend.Upload, k: int) -> str:
    if len(up.images) == 1:
        return up.name
    return f"{up.name}, slice {k + 1} of {len(up.images)} (position {up.positions[k]:.2f})"


# --------------------------------------------------------------------------- codes


def codes_tab(page: Page) -> None:
    st = page.st
    with gr.Tab("Codes", id="codes") as tab:
        gr.Markdown("Click a code: what a grid of it alone decodes to, and where it occurs.")
        with gr.Row():
            with gr.Column(scale=2):
                book = page.gallery("codebook", "codebook", 8)
                usage = page.add(gr.BarPlot(x="code", y="count", elem_id="code-usage", height=240))
            with gr.Column(scale=3):
                info = page.add(gr.Markdown(elem_id="code-info"))
                with gr.Row():
                    tile = page.image("code-tile", "a grid of this code, decoded")
                    here = page.image("code-in-image", "where it occurs in the current image")
                examples = page.gallery("code-examples", "training images where it occurs most", 4)

    @guarded
    def load_book() -> list:
        counts = backend.code_usage(st)
        tiles = [(page.png(t), f"{k}") for k, t in enumerate(backend.code_tiles(st))]
        frame = pd.DataFrame({"code": np.arange(len(counts)), "count": counts})
        return [tiles, frame]

    @guarded
    def show_code(current: dict | None, evt: gr.SelectData) -> list:
        k = int(evt.index)
        counts = backend.code_usage(st)
        images, masks = backend.code_examples(st, k)
        share = counts[k] / max(1, counts.sum())
        text = f"**code {k}**: {counts[k]} cells ({share:.1%}) of the training images' codes"
        here = None
        if current is not None:
            here = page.png(render.cells_overlay(current["image"], current["codes"] == k))
        shown = [page.png(render.cells_overlay(im, m)) for im, m in zip(images, masks, strict=True)]
        return [text, page.png(backend.code_tiles(st)[k]), here, shown]

    tab.select(load_book, None, [book, usage], concurrency_id="model")
    book.select(show_code, page.current, [info, tile, here, examples], concurrency_id="model")
