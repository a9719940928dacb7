"""``oasisvq studio RUN``: the Studio, a local web page to explore a run (extra ``studio``)."""

from __future__ import annotations

import argparse
import importlib.util
import sys

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _cmd_studio(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        print(
            "oasisvq studio: needs Gradio: pip install -e '.[studio]'",
            file=sys.stderr,
        )
        return 2
    if args.host not in LOOPBACK:
        print(
            f"warning: listening on {args.host}: anyone who can reach it can use the page "
            "(there is no authentication)",
            file=sys.stderr,
        )
    # Imported here, not at the top: Gradio is an optional extra and slow to import.
    from oasisvq.studio.app import serve

    serve(args.run, args.data, args.host, args.port, args.device)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_cmd_studio)
