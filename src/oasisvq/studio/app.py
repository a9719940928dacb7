"""The Studio page (Gradio Blocks) and its server: ``serve(RUN)`` is ``oasisvq studio RUN``.

One :class:`~oasisvq.studio.backend.Studio` (the run, loaded once) serves every browser.
Model work queues on one shared concurrency group, each request on one CPU thread, so
several browsers are answered side by side instead of fighting over the cores.

Safety: the server only serves files the page itself wrote, from its own temporary
folder (Gradio's upload and cache folder); :class:`FileGuard` refuses every other
``file=`` request, remote URLs included, before Gradio sees it. Uploads above
``backend.MAX_UPLOAD_BYTES`` are refused by Gradio while they arrive.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import unquote

import gradio as gr
import torch
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse

from oasisvq.studio import backend
from oasisvq.studio.page import KEEP_S, Page, tab_training
from oasisvq.studio.tab_edit import edit_tab
from oasisvq.studio.tab_images import codes_tab, reconstruct_tab
from oasisvq.studio.tab_prior import sample_tab, surprise_tab
from oasisvq.studio.tab_volumes import sample_volumes_tab, subjects_tab

CSS = """
.studio-image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
.gallery img { image-rendering: pixelated; }
.code-grid { border-collapse: collapse; font: 11px monospace; text-align: center; }
.code-grid td { padding: 0; border: 1px solid rgba(255, 255, 255, 0.35); }
"""
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: works offline
_PROTOCOL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|//)")


class FileGuard:
    """ASGI middleware: a ``.../file=PATH`` (or ``.../file/PATH``) request is passed on only
    when PATH lies inside ``root``; anything else, remote URLs too, gets a 403."""

    def __init__(self, app, root: str) -> None:
        self.app = app
        self.root = os.path.realpath(root)

    def allowed(self, target: str) -> bool:
        if _PROTOCOL.match(target):
            return False
        real = os.path.realpath(unquote(target))
        return real == self.root or real.startswith(self.root + os.sep)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            match = re.search(r"/file[=/](.*)$", scope.get("path", ""))
            if match and not self.allowed(match.group(1)):
                refuse = PlainTextResponse(
                    "oasisvq studio: this page serves only files it made itself", 403
                )
                return await refuse(scope, receive, send)
        await self.app(scope, receive, send)


def build(st: backend.Studio, workdir: Path, public: bool = False) -> gr.Blocks:
    """The page for ``st``; files it writes go to ``workdir``."""
    keep = (KEEP_S // 6, KEEP_S)  # Gradio's copies of what the page showed go after KEEP_S too
    with gr.Blocks(title="OASISVQ Studio", analytics_enabled=False, delete_cache=keep) as demo:
        page = Page.create(st, workdir)
        gr.Markdown(_header(st, public), elem_id="header")
        with gr.Tabs(elem_id="tabs") as page.tabs:
            if st.model.dims == 3:
                sample_volumes_tab(page, demo)
                subjects_tab(page, demo)
            else:
                reconstruct_tab(page, demo)
                codes_tab(page)
                sample_tab(page, demo)
                edit_tab(page, demo)
                surprise_tab(page, demo)
            tab_training(page)
    return demo


def _header(st: backend.Studio, public: bool) -> str:
    o = backend.overview(st)
    priors = ", ".join(o["priors"]) or "none (train one with `oasisvq train-prior`)"
    warn = "\n\n**Open to the network without authentication.**" if public else ""
    cfg = st.model.config
    if cfg.dims == 3:
        shape = "x".join(map(str, cfg.volume_shape))
        what = f"{shape} volumes at {cfg.voxel_mm:g} mm, {'x'.join(map(str, cfg.grid_shape))} grid"
    else:
        what = f"{o['image_size']}px images, {o['grid']}x{o['grid']} grid"
    return (
        f"## OASISVQ Studio\n`{o['run']}`: preset `{o['preset']}`, {what} of "
        f"{o['codebook_size']} codes ({o['bits_per_image']:.0f} bits/"
        f"{'volume' if cfg.dims == 3 else 'image'}); data: {o['data']}; priors: {priors}{warn}"
    )


def model_concurrency() -> int:
    """Model requests run side by side, one CPU thread each (1-thread requests in parallel
    answer several browsers sooner than multi-threaded ones in turn on a busy CPU)."""
    return max(1, min(4, os.cpu_count() or 1))


def serve(
    run: str | Path,
    data: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    device: str = "cpu",
) -> None:
    """Open ``run``, start the page on ``host:port``, print its address, serve until Ctrl-C."""
    workdir = Path(tempfile.mkdtemp(prefix="oasisvq-studio-"))
    os.environ["GRADIO_TEMP_DIR"] = str(workdir)  # uploads and outputs land here, nowhere else
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(workdir / "examples")
    torch.set_num_threads(1)
    if threading.current_thread() is threading.main_thread():  # `kill` cleans up as Ctrl-C does
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        st = backend.open_run(run, data, device)
        backend.warm_up(st)
        demo = build(st, workdir, public=host not in ("127.0.0.1", "localhost", "::1"))
        demo.queue(default_concurrency_limit=model_concurrency(), max_size=256)
        _, url, _ = demo.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
            share=False,
            ssr_mode=False,
            max_file_size=backend.MAX_UPLOAD_BYTES,
            allowed_paths=[],
            footer_links=[],
            theme=gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"]),
            css=CSS,
            app_kwargs={"middleware": [Middleware(FileGuard, root=str(workdir))]},
        )
        print(f"OASISVQ Studio: {url} (Ctrl-C stops it)", flush=True)
        demo.block_thread()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
