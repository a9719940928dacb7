"""``oasisvq studio RUN``: the Studio, a local web page to explore a run (extra ``studio``)."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from oasisvq.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def run_studio(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        raise ConfigError("needs Gradio, an optional extra: pip install -e '.[studio]'")
    if args.host not in LOOPBACK:
        print(
            f"warning: listening on {args.host}: anyone who can reach it can use the page "
            "(there is no authentication)",
            file=sys.stderr,
        )
    from oasisvq.studio.app import serve  # lazy: Gradio is an optional extra, slow to import

    serve(args.run, args.data, args.host, args.port, args.device)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``studio``."""
    p = sub.add_parser(
        "studio",
        help="a local web page to explore a run: reconstructions, codes, samples, edits",
        description="Start OASISVQ Studio for RUN and print its address (docs/studio.md).",
    )
    p.add_argument("run", help="VQ-VAE run directory written by `oasisvq train`")
    p.add_argument(
        "--data", default=None, help="data root (default: the one the run was trained on)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)"
    )
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.set_defaults(func=run_studio)
