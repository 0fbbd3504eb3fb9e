"""Benchmarks of the distill pipeline; each module runs from the repository root as ``python -m bench.NAME``.

Their results, with the commands that produced them, are in ``bench/results/``.
"""
