"""The tabs of a run of whole volumes: Sample brains (at an age and sex, shown as three
orthogonal slices, taken away as NIfTI) and Subjects (a subject of the data, or an
uploaded scan, through the quantizer: original, reconstruction, difference, SSIM-3D; the
reconstruction taken away as NIfTI)."""

from __future__ import annotations

import uuid

import gradio as gr
import numpy as np

from oasisvq.studio import render
from oasisvq.studio import volumes as V
from oasisvq.studio.page import (
    VOLUME_TYPES,
    Page,
    guarded,
    need,
    sample_controls,
    sampling,
    selected_index,
    upload_volume,
    wire_conditions,
)
from oasisvq.studio.tab_prior import NO_PRIOR

GUIDANCE = 5.0  # where age, sex and diversity came closest to real volumes (docs/volumes.md)
COUNT = (V.MAX_VOLUMES, 2, "volumes")  # most, default, label


def sample_volumes_tab(page: Page, demo: gr.Blocks) -> None:
    with gr.Tab("Sample brains", id="sample3d"):
        if not page.priors():
            gr.Markdown(NO_PRIOR)
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                prior, conds, knobs, go = sample_controls(
                    page, "sample3d", "3d", guidance=(10, GUIDANCE, 0.5), count=COUNT
                )
            with gr.Column(scale=3):
                # whole views, not square crops: one volume's three slices are wide
                gallery = page.gallery(
                    "volumes", "sagittal | coronal | axial", 2, object_fit="contain", height="auto"
                )
                with gr.Row():
                    nearest = page.button(
                        "nearest3d-btn", "Nearest training volume of the selected sample"
                    )
                    download = page.add(
                        gr.DownloadButton(
                            "Download NIfTI (ZIP)", elem_id="nifti-zip", interactive=False
                        )
                    )
                near_text = page.add(gr.Markdown(elem_id="nearest3d-text"))
                near_image = page.image("nearest3d-image", "nearest training volume", height=220)

    @guarded
    def draw(*inputs) -> list:
        s = V.sample_volumes(page.st, **sampling(*inputs))
        shown = [(page.png(V.views(v)), f"sample {i}") for i, v in enumerate(s.images)]
        path = page.output("zip", f"volumes-{uuid.uuid4().hex[:8]}.zip")
        V.export_nifti_zip(page.st, s, path)
        return [shown, s, None, gr.update(value=str(path), interactive=True)]

    @guarded
    def nearest_of(s, i: int | None) -> list:
        volume = need(s, "sample").images[need(i, "click a sample")]
        idx, score, found, label = V.nearest_training(page.st, volume)
        text = f"training volume #{idx} ({label}): SSIM-3D **{score:.3f}** to sample {i}"
        return [text, page.png(V.views(found))]

    wire_conditions(page, demo, prior, conds, knobs[0], guided=GUIDANCE)
    outputs = [gallery, page.samples, page.selected, download]
    go.click(draw, [prior, *conds, *knobs], outputs, concurrency_id="model")
    gallery.select(selected_index, None, page.selected)
    nearest.click(
        nearest_of, [page.samples, page.selected], [near_text, near_image], concurrency_id="model"
    )


def subjects_tab(page: Page, demo: gr.Blocks) -> None:
    names = list(V.volume_splits(page.st))
    first = "validate" if "validate" in names else (names[0] if names else None)
    with gr.Tab("Subjects", id="subjects"):
        if not names:
            gr.Markdown(f"The run's data is not found ({page.st.data_root}): `--data DIR`.")
        with gr.Row():
            split = page.add(gr.Dropdown(names, value=first, label="split", elem_id="split3d"))
            subject = page.add(gr.Dropdown([], label="subject", elem_id="subject3d"))
            go = page.button("reconstruct3d-btn", "Reconstruct", primary=True)
        with gr.Row():
            upload = page.add(
                gr.File(
                    label="or upload a scan: NIfTI, or Analyze .hdr with its .img (20 MB at most)",
                    file_count="multiple",
                    file_types=VOLUME_TYPES,
                    elem_id="upload3d",
                )
            )
            mask = page.add(
                gr.File(
                    label="and its brain mask (nonzero = brain), unless the scan "
                    "is brain-extracted",
                    file_count="multiple",
                    file_types=VOLUME_TYPES,
                    elem_id="upload3d-mask",
                )
            )
            nifti = page.add(
                gr.DownloadButton(
                    "Download the reconstruction (NIfTI)",
                    elem_id="recon3d-nifti",
                    interactive=False,
                )
            )
        metrics = page.add(gr.Markdown(elem_id="recon3d-metrics"))
        original = page.image("recon3d-original", "original", height=220)
        recon = page.image("recon3d-output", "reconstruction", height=220)
        diff = page.image("recon3d-diff", "reconstruction - original", height=220)

    @guarded
    def listed(name: str | None):
        labels = V.subjects(page.st, name) if name else []
        return gr.update(
            choices=[(x, i) for i, x in enumerate(labels)], value=0 if labels else None
        )

    def shown(r: dict) -> list:
        pictures = [V.views(r["original"]), V.views(r["reconstruction"])]
        difference = render.diff_map(V.views(r["reconstruction"] - r["original"]))
        path = page.output("nifti", f"{uuid.uuid4().hex[:8]}_recon.nii.gz")
        V.write_reconstruction(r, path)
        return [
            f"{r['label']}: SSIM-3D {r['ssim']:.3f}, PSNR {r['psnr']:.2f} dB",
            *(page.png(p) for p in pictures),
            page.png(np.asarray(difference)),
            gr.update(value=str(path), interactive=True),
        ]

    @guarded
    def run(name: str | None, index: int | None) -> list:
        if name is None or index is None:
            raise ValueError("choose a split and a subject first")
        return shown(V.reconstruct_subject(page.st, name, int(index)))

    @guarded
    def uploaded(paths: list[str] | None, mask_paths: list[str] | None) -> list:
        scan = upload_volume(page, paths)
        if scan is None:
            return gr.skip()
        return shown(V.reconstruct_upload(page.st, *scan, upload_volume(page, mask_paths)))

    outputs = [metrics, original, recon, diff, nifti]
    split.change(listed, split, subject)
    demo.load(listed, split, subject)
    go.click(run, [split, subject], outputs, concurrency_id="model")
    for changed in (upload, mask):  # either file may come second
        changed.upload(uploaded, [upload, mask], outputs, concurrency_id="model")
