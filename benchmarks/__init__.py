"""Benchmarks of the installed ``oasisvq`` package: ``python -m benchmarks.NAME`` from the
repository root writes one JSON result to ``benchmarks/results/``, and
``python -m benchmarks.report`` turns them into ``docs/results.md``."""
