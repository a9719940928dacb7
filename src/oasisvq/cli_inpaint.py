"""``oasisvq inpaint``: resample the code cells of an image under a mask with a run's prior.

    oasisvq inpaint RUN image.png --mask mask.png --out DIR [--prior NAME] [--n 4]
                    [--steps S] [--temperature T] [--top-k K] [--guidance G] [--seed S]
                    [--class NAME] [--slice-pos P] [--age A]

Registered by ``oasisvq.cli`` through :func:`add_parsers`.
"""

from __future__ import annotations

import argparse
import json


def _cmd_inpaint(args: argparse.Namespace) -> int:
    from oasisvq.sample.inpaint import inpaint_files
    from oasisvq.train.distributed import pick_device

    info = inpaint_files(
        args.run,
        args.image,
        args.mask,
        args.out,
        prior=args.prior,
        n=args.n,
        temperature=args.temperature,
        top_k=args.top_k,
        guidance=args.guidance,
        steps=args.steps,
        seed=args.seed,
        class_name=args.class_name,
        slice_pos=args.slice_pos,
        age=args.age,
        device=pick_device(args.device),
    )
    print(json.dumps(info, indent=2))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``inpaint``."""
    p = sub.add_parser(
        "inpaint",
        help="resample the code cells of an image under a mask with a run's prior",
        description="Encode IMAGE with the run's VQ-VAE, resample the code cells that MASK "
        "covers (a cell whose pixels are more than half white) with the prior and decode. "
        "A masked prior (maskgit) draws them given every other cell; an autoregressive prior "
        "draws them in raster order given the cells before each, not those after. Writes "
        "DIR/input.png, reconstruction.png, inpainted_<i>.png, codes.npy (n, h, w), "
        "input_codes.npy, cell_mask.npy, the figure inpaint.png and inpaint.json.",
    )
    p.add_argument("run", help="VQ-VAE run directory with a trained prior")
    p.add_argument("image", help="8-bit grayscale image (brought to the run's size and fit)")
    p.add_argument(
        "--mask", required=True, help="8-bit mask image of IMAGE's size: white = resample"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=4, help="number of inpaintings (default 4)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="parallel steps of a masked prior (default: the prior's); autoregressive priors "
        "draw one cell a step",
    )
    p.add_argument(
        "--prior", default=None, help="prior run in RUN/priors/ (default: the only or newest one)"
    )
    p.add_argument(
        "--temperature", type=float, default=1.0, help="softmax temperature (0 = most likely code)"
    )
    p.add_argument(
        "--top-k", type=int, default=None, help="draw among the K most likely codes only"
    )
    p.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free guidance (1 = none)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same inpaintings)")
    p.add_argument(
        "--class", dest="class_name", default=None, help="class name (class-conditional prior)"
    )
    p.add_argument(
        "--slice-pos", type=float, default=None, help="normalised slice position in [0, 1]"
    )
    p.add_argument("--age", type=float, default=None, help="age in years (age-conditional prior)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.set_defaults(func=_cmd_inpaint)
