"""The Edit tab: select cells of a code grid on its decoded image (a square brush, or a
rectangle from two clicks), then draw them anew from the prior or set them to one code;
the grid is decoded again at once."""

from __future__ import annotations

import gradio as gr
import numpy as np

from oasisvq.studio import backend, render
from oasisvq.studio.page import (
    Page,
    condition_inputs,
    conditions,
    guarded,
    need,
    wire_conditions,
)

TOOLS = ["brush", "rectangle"]
# the canvas is sent at least this large: Gradio maps a click on an image shown larger
# than its pixels to the wrong pixel, so it must never be shown enlarged
CANVAS_PX = 512


def _zoom(page: Page) -> int:
    return max(1, CANVAS_PX // page.st.size)


def new_edit(page: Page, codes: np.ndarray) -> dict:
    """Edit state for ``codes (h, w)``: nothing selected yet."""
    image = backend.decode(page.st, codes)
    codes = np.array(codes, np.int64)
    return {"codes": codes, "mask": np.zeros(codes.shape, bool), "image": image, "anchor": None}


def click(state: dict, x: int, y: int, size: int, tool: str, brush: int) -> dict:
    """The state after a click at pixel ``(x, y)`` of the ``size``-pixel image: the brush
    toggles a ``brush`` x ``brush`` square of cells; a rectangle needs two clicks."""
    mask, (h, w) = state["mask"].copy(), state["mask"].shape
    r, c = min(int(y) * h // size, h - 1), min(int(x) * w // size, w - 1)
    anchor = None
    if tool == "rectangle" and state["anchor"] is None:
        mask[r, c], anchor = True, (r, c)
    elif tool == "rectangle":
        (r0, c0) = state["anchor"]
        mask[min(r0, r) : max(r0, r) + 1, min(c0, c) : max(c0, c) + 1] = True
    else:
        half = (brush - 1) // 2
        rows = slice(max(r - half, 0), r - half + brush)
        cols = slice(max(c - half, 0), c - half + brush)
        mask[rows, cols] = not state["mask"][r, c]
    return {**state, "mask": mask, "anchor": anchor}


def _view(page: Page, state: dict, done: str = "") -> list:
    """Canvas (the decoded grid, selection in red), code grid, a line of text (``done``:
    what the last edit did), the state."""
    n = int(state["mask"].sum())
    hint = " (click the opposite corner)" if state["anchor"] is not None else ""
    hint += f"; {done}" if done else ""
    overlay = render.cells_overlay(state["image"], state["mask"])
    return [
        page.png(overlay.repeat(_zoom(page), axis=0).repeat(_zoom(page), axis=1)),
        render.code_grid_html(state["codes"], page.st.codebook_size),
        f"{n} of {state['mask'].size} cells selected{hint}",
        state,
    ]


def edit_tab(page: Page, demo: gr.Blocks) -> None:
    with gr.Tab("Edit", id="edit"):
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                load = page.button("edit-load-current", "Edit the Reconstruct tab's image")
                tool = page.add(
                    gr.Radio(TOOLS, value=TOOLS[0], label="select cells with", elem_id="edit-tool")
                )
                brush = page.slider("brush-size", "brush (cells)", 1, 4, 1)
                with gr.Row():
                    everything = page.button("select-all", "Select all")
                    clear = page.button("select-clear", "Clear")
                prior = page.prior_choice("edit")
                conds = condition_inputs(page, "edit")
                temperature = page.slider("edit-temperature", "temperature", 0, 2, 1, 0.05)
                seed = page.integer("edit-seed", "seed")
                resample = page.button("resample-btn", "Resample the selected cells", primary=True)
                code = page.integer("edit-code", "code")
                set_code = page.button("set-code-btn", "Set the selected cells to this code")
            with gr.Column(scale=3):
                with gr.Row():
                    before = page.image("edit-before", "before")
                    canvas = page.image("edit-canvas", "after: click to select cells")
                    grid = page.add(gr.HTML(elem_id="edit-codes"))
                info = page.add(gr.Markdown(elem_id="edit-info"))
    view = [canvas, grid, info, page.edit]

    @guarded
    def from_current(current: dict | None) -> list:
        state = new_edit(page, need(current, "show an image in the Reconstruct tab")["codes"])
        return [page.png(state["image"]), *_view(page, state)]

    @guarded
    def from_sample(samples: backend.Samples | None, i: int | None) -> list:
        codes = need(samples, "sample").codes[need(i, "click a sample")]
        state = new_edit(page, codes)
        return [page.png(state["image"]), *_view(page, state), gr.Tabs(selected="edit")]

    @guarded
    def on_click(state: dict | None, t: str, b: float, evt: gr.SelectData) -> list:
        state = need(state, "load a grid")
        size = state["image"].shape[-1] * _zoom(page)
        return _view(page, click(state, *evt.index, size, t, int(b)))

    @guarded
    def select_all(state: dict | None, value: bool) -> list:
        state = need(state, "load a grid")
        return _view(page, {**state, "mask": np.full(state["mask"].shape, value), "anchor": None})

    @guarded
    def redraw(state: dict | None, name, cls, pos, age, sex, temp, s) -> list:
        state = need(state, "load a grid")
        cond = conditions(cls, pos, age, sex)
        codes = backend.resample_cells(
            page.st, state["codes"], state["mask"], name, cond, float(temp), None, s
        )
        done = f"{int(state['mask'].sum())} cells drawn anew"
        return _view(page, {**state, "codes": codes, "image": backend.decode(page.st, codes)}, done)

    @guarded
    def set_to(state: dict | None, k: float) -> list:
        state = need(state, "load a grid")
        codes = backend.set_cells(page.st, state["codes"], state["mask"], int(k or 0))
        done = f"{int(state['mask'].sum())} cells set to code {int(k or 0)}"
        return _view(page, {**state, "codes": codes, "image": backend.decode(page.st, codes)}, done)

    load.click(from_current, page.current, [before, *view], concurrency_id="model")
    page.ui["edit-sample-btn"].click(
        from_sample,
        [page.samples, page.selected],
        [before, *view, page.tabs],
        concurrency_id="model",
    )
    canvas.select(on_click, [page.edit, tool, brush], view)
    everything.click(lambda s: select_all(s, True), page.edit, view)
    clear.click(lambda s: select_all(s, False), page.edit, view)
    resample.click(
        redraw, [page.edit, prior, *conds, temperature, seed], view, concurrency_id="model"
    )
    set_code.click(set_to, [page.edit, code], view, concurrency_id="model")
    wire_conditions(page, demo, prior, conds)
