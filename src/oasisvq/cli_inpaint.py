"""``oasisvq inpaint``: resample the code cells of an image under a mask with a run's prior.

    oasisvq inpaint RUN image.png --mask mask.png --out DIR [--prior NAME] [--n 4]
                    [--steps S] [--temperature T] [--top-k K] [--guidance G] [--seed S]
                    [--class NAME] [--slice-pos P] [--age A] [--batch-size B] [--precision P]

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
        batch_size=args.batch_size,
        precision=args.precision,
        device=pick_device(args.device),
    )
    print(json.dumps(info, indent=2))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``inpaint``."""
    from oasisvq.cli_prior import _sampling_options

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
    # --prior --temperature --top-k --guidance --seed --batch-size --precision --device
    _sampling_options(p, "fp32")
    p.add_argument(
        "--class", dest="class_name", default=None, help="class name (class-conditional prior)"
    )
    p.add_argument(
        "--slice-pos", type=float, default=None, help="normalised slice position in [0, 1]"
    )
    p.add_argument("--age", type=float, default=None, help="age in years (age-conditional prior)")
    p.set_defaults(func=_cmd_inpaint)
