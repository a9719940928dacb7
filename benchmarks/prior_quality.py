"""One trained prior and its samples measured, as ``oasisvq evaluate-samples`` measures
them; one JSON result.

    python -m benchmarks.prior_quality --run runs/mid --prior transformer --split validate \
        --out benchmarks/results/samples-mid-transformer.json

The result is ``evaluate_samples``' (``likelihood``, ``memorisation``, ``diversity``,
``frechet``, ``conditions`` and their flat aliases) with the command and the machine;
for a run of whole volumes ``evaluate_volume_prior``'s (with conditioning fidelity).
Figures go to ``RUN/priors/<prior>/eval-samples`` as with ``evaluate-samples``.
"""

from __future__ import annotations

import argparse

import oasisvq
from benchmarks.machine import command_line, machine_info, save_result
from oasisvq.evaluate.samples import SampleEvaluation, evaluate_samples
from oasisvq.evaluate.samples3d import evaluate_volume_prior


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a trained VQ-VAE run with a trained prior")
    p.add_argument("--prior", default=None, help="prior name (default: the latest trained)")
    p.add_argument("--data", default=None, help="data root (default: the run's)")
    p.add_argument("--split", default="validate")
    p.add_argument("--n", type=int, default=None, help="samples (default 1000; 64 volumes)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--guidance", type=float, default=1.0, help="conditional priors; 1 = none")
    p.add_argument("--steps", type=int, default=None, help="masked priors (default: theirs)")
    p.add_argument(
        "--choice-temperature", type=float, default=None, help="masked priors (default: theirs)"
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "auto"),
        help="the decoder's and a masked prior's network's (default fp32)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--texture", action="store_true", help="draw the run's scan texture onto the samples"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="JSON result")
    args = p.parse_args()
    options = oasisvq.SamplingOptions(
        temperature=args.temperature,
        top_k=args.top_k,
        guidance=args.guidance,
        steps=args.steps,
        choice_temperature=args.choice_temperature,
        seed=args.seed,
        precision=args.precision,
        texture=args.texture,
    )
    run = oasisvq.load(args.run, args.device)
    n = args.n or (64 if run.dims == 3 else 1000)
    settings = SampleEvaluation(n=n, split=args.split, data_root=args.data)
    measure = evaluate_volume_prior if run.dims == 3 else evaluate_samples
    result = measure(run, args.prior, options, settings)
    save_result(
        {
            "benchmark": "prior_quality",
            **result,
            "command": command_line(),
            "machine": machine_info(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
