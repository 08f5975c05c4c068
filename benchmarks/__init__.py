"""trio_pool benchmarks: ``python -m benchmarks [names...] [--quick] [--json-dir DIR]``.

Each ``benchmarks/bench_<name>.py`` module has ``run(quick: bool = False) -> dict`` which
measures, prints a table with ratios against a baseline measured in the same run, and
returns ``{"name": ..., "results": [...], "ratios": {...}}``. The machine is shared and
noisy: compare ratios, not absolute times, across runs. See ``docs/benchmarks.md``.
"""
