"""Run the benchmarks: ``python -m benchmarks [names...] [--quick] [--json-dir DIR]``.

Discovers every ``benchmarks/bench_<name>.py``, runs those named (all by default; a name
is ``<name>`` or ``bench_<name>``), writes each result as JSON (and, for ``http``,
``pooling``, ``spike``, ``httpx``, ``http2`` and ``upstream``, a PNG chart beside it:
:mod:`benchmarks._charts`), and ends with a summary of every ratio. Exits 1 if a benchmark
raised (the others still run).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ._charts import CHARTED, ChartsUnavailable, write_chart
from ._common import machine, now_stamp, print_table, raise_nofile, write_json

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Names (without ``bench_``) of the benchmark modules, sorted."""
    return sorted(
        info.name.removeprefix("bench_")
        for info in pkgutil.iter_modules([str(HERE)])
        if info.name.startswith("bench_")
    )


def _fmt_ratio(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    available = discover()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="trio_pool benchmarks; ratios are against baselines measured in the same run.",
    )
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {available})")
    parser.add_argument("--quick", action="store_true", help="short runs (about 20 s each at most)")
    parser.add_argument(
        "--json-dir",
        type=Path,
        default=HERE / "results",
        help="where to write <stamp>-<name>.json (default benchmarks/results)",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--no-charts",
        action="store_true",
        help=f"write no PNG charts (drawn for {sorted(CHARTED)} when matplotlib is installed)",
    )
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(available))
        return 0
    names = [name.removeprefix("bench_").removesuffix(".py") for name in args.names] or available
    unknown = [name for name in names if name not in available]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {available}")

    raise_nofile()
    info = machine()
    stamp = now_stamp()
    print(
        f"trio_pool benchmarks {'(quick) ' if args.quick else ''}on {info['description']},"
        f" Python {info['python']}, trio {info['trio']}"
    )
    summary: list[tuple[str, str, str]] = []
    failed: list[str] = []
    charts = not args.no_charts
    started = time.perf_counter()
    for name in names:
        print(f"\n#### {name}", flush=True)
        began = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            result: dict[str, Any] = module.run(quick=args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            summary.append((name, "FAILED", ""))
            continue
        elapsed = time.perf_counter() - began
        result.setdefault("name", name)
        result["elapsed_seconds"] = round(elapsed, 2)
        path = write_json(result, args.json_dir, quick=args.quick, stamp=stamp)
        print(f"({name}: {elapsed:.1f} s, JSON in {path})")
        if name in CHARTED and charts:
            try:
                chart = write_chart(json.loads(path.read_text()), path)
            except ChartsUnavailable:
                print("(no charts: matplotlib is not installed; pip install -e '.[bench]')")
                charts = False
            except Exception:
                traceback.print_exc()
                print(f"({name}: drawing its chart failed; the JSON is written)")
            else:
                print(f"({name}: chart in {chart})")
        for ratio, value in result.get("ratios", {}).items():
            summary.append((name, ratio, _fmt_ratio(value)))
    print_table(
        f"summary ({time.perf_counter() - started:.0f} s)", ["benchmark", "ratio", "value"], summary
    )
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
