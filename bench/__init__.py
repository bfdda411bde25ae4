"""Benchmarks of agentapp's streaming, persistence and concurrency against plain Strands baselines.

Run everything with ``python bench/run.py --quick`` (a smoke run) or ``--full``; see ``docs/benchmarks.md``.
"""
