"""Benchmarks: programs that print tables of numbers next to a reference measured in the same run.

``python -m bench`` (``make bench``) runs them all; ``--quick`` runs tiny versions that only check that the
results are correct (CI). Each module exposes ``run(ctx: Context) -> list[Table]``; see `bench.report`.
"""
