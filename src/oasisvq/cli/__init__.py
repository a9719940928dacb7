"""``oasisvq`` command line: one sub-command per pipeline step.

Every command module has ``register(subparsers)``; handlers parse, call the library and
print. Errors the user can fix (:mod:`oasisvq.errors`) end as one line on stderr and the
exit code of their class (0 ok, 2 bad argument, 3 bad data, 4 unusable run folder,
5 output not writable, 130 interrupted); anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from oasisvq.cli import data, evaluate, prior, studio, train
from oasisvq.errors import Interrupted, OasisError

COMMAND_MODULES = (data, train, prior, evaluate, studio)
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oasisvq", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help (0) as a code, not an exit
        return int(exc.code or 0)
    try:
        return int(args.func(args) or 0)
    except OasisError as exc:
        print(f"oasisvq {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:  # a training: says which checkpoint a --resume continues
        print(f"oasisvq {args.command}: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(getattr(args, "interrupted", "interrupted"), file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`oasisvq data | head`): stop quietly, as a Unix tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def entry() -> None:
    """The console script."""
    sys.exit(main())
