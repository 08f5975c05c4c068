"""PNG charts of benchmark results, written next to their JSON by ``python -m benchmarks``.

One chart per benchmark that has one:

* ``http``: throughput against concurrency, one line per client (log-scale concurrency),
  so httpcore's collapse shows as a line falling to zero;
* ``pooling``: latency percentiles without and with pooling, plain TCP and TLS (log scale);
* ``spike``: a timeline of the connect hand-off spike, one horizontal segment per request
  from its start to its end, one panel per variant;
* ``httpx``: httpx + ``PoolTransport`` against its glue-free bound, one bar per mode and
  concurrency (throughput ratio, and the client-CPU ratio beside it), the goal as a line.
* ``http2``: our HTTP/2 against our HTTP/1.1 at each concurrency, one bar for the
  throughput ratio and one for the client-CPU-per-request ratio, the parity line at 1.
* ``upstream``: latency over the run, one panel per variant (with and without ejection):
  the median and slowest request of each 100 ms (log scale), a dot per request that paid
  a fallback, and lines at the replica's stall and at its ejection.

matplotlib (the ``bench`` extra) is imported only when a chart is drawn, with the
non-interactive Agg backend; without it :func:`write_chart` raises
:class:`ChartsUnavailable` and ``python -m benchmarks`` prints one line instead. The
``*_series`` functions only shape the JSON result into what is drawn: plain Python, tested
without matplotlib.

Re-draw a saved result: ``python -m benchmarks._charts benchmarks/results/<file>.json``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "CHARTED",
    "ChartsUnavailable",
    "UpstreamPanel",
    "http2_series",
    "http_series",
    "httpx_series",
    "pooling_series",
    "spike_series",
    "upstream_series",
    "write_chart",
]

# Drawn first, most prominent; the others in the order of the result.
OURS = "trio_pool.http"
PERCENTILES = (("p50", "p50_us"), ("p90", "p90_us"), ("p99", "p99_us"))


class ChartsUnavailable(RuntimeError):
    """matplotlib is not installed (``pip install -e '.[bench]'``)."""


# -- the data drawn (no matplotlib) ---------------------------------------------------------


def http_series(result: Mapping[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """``bench_http``: each client's ``(concurrency, requests per second)``, ascending.

    A client measured nowhere (aiohttp not installed: all zeros with no request) is left
    out; a client that collapsed at some concurrency keeps its zeros: that is the point.
    """
    series: dict[str, list[tuple[int, float]]] = {}
    for row in result["results"]:
        series.setdefault(row["client"], []).append(
            (int(row["concurrency"]), float(row["requests_per_second"]))
        )
    for client in list(series):
        points = sorted(series[client])
        if client == "aiohttp" and all(rps == 0 for _, rps in points):
            del series[client]
        else:
            series[client] = points
    ordered = sorted(series, key=lambda client: client != OURS)
    return {client: series[client] for client in ordered}


def pooling_series(result: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``bench_pooling``: ``{transport: {variant: {"p50": µs, ...}}}`` for the percentiles
    the result holds (p50 and p99 always; p90 in newer results)."""
    series: dict[str, dict[str, dict[str, float]]] = {}
    for row in result["results"]:
        values = {label: float(row[key]) for label, key in PERCENTILES if key in row}
        series.setdefault(row["transport"], {})[row["variant"]] = values
    return series


def spike_series(
    result: Mapping[str, Any],
) -> list[tuple[str, int | None, list[tuple[float, float]]]]:
    """``bench_spike``: per variant, ``(name, connections opened, requests)`` with the
    requests as ``(start_s, end_s)`` sorted by start (seconds from the spike's start)."""
    opened: Mapping[str, int] = result.get("connections_opened", {})
    panels = []
    for variant, spans in result["timelines"].items():
        requests = sorted((float(start), float(end)) for start, end in spans)
        panels.append((variant, opened.get(variant), requests))
    return panels


def httpx_series(result: Mapping[str, Any]) -> dict[str, list[tuple[int, float, float]]]:
    """``bench_httpx``: per mode, ``(concurrency, c / bound, CPU ratio)`` ascending, in
    the order the modes were measured."""
    ratios: Mapping[str, float] = result["ratios"]
    series: dict[str, list[tuple[int, float, float]]] = {}
    for row in result["results"]:
        mode, n = row["mode"], int(row["concurrency"])
        point = (n, float(ratios[f"{mode}@{n}"]), float(ratios[f"{mode}_cpu@{n}"]))
        points = series.setdefault(mode, [])
        if point not in points:
            points.append(point)
    return {mode: sorted(points) for mode, points in series.items()}


def http2_series(result: Mapping[str, Any]) -> list[tuple[int, float, float]]:
    """``bench_http2``: ``(concurrency, throughput ratio, CPU ratio)`` of our HTTP/2 to
    our HTTP/1.1, ascending (from the result's ratios)."""
    ratios: Mapping[str, float] = result["ratios"]
    points = []
    for key, value in ratios.items():
        name, _, n = key.rpartition("@")
        if name == "trio_pool h2/ours_http11":
            cpu = ratios[f"trio_pool h2_cpu/ours_http11_cpu@{n}"]
            points.append((int(n), float(value), float(cpu)))
    return sorted(points)


class UpstreamPanel(NamedTuple):
    """One variant of ``bench_upstream``, times in seconds from the run's start."""

    variant: str
    requests: int
    failed: int
    p99_ms: float | None
    stall_s: float
    ejected_s: float | None  # when the stalled replica was ejected; None: never
    #: ``(bin start, median ms, slowest ms)`` of the bins with a request, in time order.
    bins: list[tuple[float, float, float]]
    slow: list[tuple[float, float]]  # ``(start, latency ms)`` of the slow requests, sorted


def upstream_series(result: Mapping[str, Any]) -> list[UpstreamPanel]:
    """``bench_upstream``: one :class:`UpstreamPanel` per variant, in the result's order."""
    stall = float(result["parameters"]["stall_at_s"])
    panels = []
    for variant, run in result["runs"].items():
        ejected = run["ejected_after_s"]
        bins = sorted(
            (float(b["start_s"]), float(b["p50_ms"]), float(b["max_ms"]))
            for b in run["timeline"]
            if b["requests"]
        )
        panels.append(
            UpstreamPanel(
                variant=variant,
                requests=int(run["requests"]),
                failed=int(run["failed"]),
                p99_ms=None if run["p99_ms"] is None else float(run["p99_ms"]),
                stall_s=stall,
                ejected_s=None if ejected is None else stall + float(ejected),
                bins=bins,
                slow=sorted((float(start), float(ms)) for start, ms in run["slow_requests"]),
            )
        )
    return panels


# -- drawing ---------------------------------------------------------------------------------


def _figure(rows: int = 1, height: float = 4.2, sharex: bool = False) -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ChartsUnavailable("matplotlib is not installed") from exc
    figure = Figure(figsize=(8.0, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)  # the Agg backend: PNG without a display
    axes = figure.subplots(rows, 1, sharex=sharex, squeeze=False)[:, 0]
    return figure, axes


def _subtitle(result: Mapping[str, Any]) -> str:
    machine = result.get("machine", {})
    parts = [str(result.get("date", ""))[:10], machine.get("description", "")]
    if result.get("quick"):
        parts.append("--quick")
    return ", ".join(p for p in parts if p)


def _draw_http(result: Mapping[str, Any], path: Path) -> None:
    figure, (axes,) = _figure()
    for client, points in http_series(result).items():
        xs = [n for n, _ in points]
        ys = [rps for _, rps in points]
        ours = client == OURS
        style = {"linestyle": ":", "color": "0.35"} if client == "h11 ceiling" else {}
        (line,) = axes.plot(
            xs,
            ys,
            marker="o",
            linewidth=2.6 if ours else 1.6,
            label=client,
            zorder=3 if ours else 2,
            **style,
        )
        for n, rps in points:
            if rps == 0:
                axes.annotate(
                    f"{client}: collapsed",
                    (n, 0),
                    textcoords="offset points",
                    xytext=(-4, 8),
                    ha="right",
                    fontsize=8,
                    color=line.get_color(),
                )
    axes.set_xscale("log")
    concurrencies = sorted({n for points in http_series(result).values() for n, _ in points})
    axes.set_xticks(concurrencies, [str(n) for n in concurrencies])
    axes.minorticks_off()
    axes.set_ylim(bottom=0)
    axes.set_xlabel("concurrent requests (tasks)")
    axes.set_ylabel("requests per second")
    axes.yaxis.set_major_formatter("{x:,.0f}")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    axes.set_title(
        f"HTTP GET to nginx on loopback: throughput by concurrency\n{_subtitle(result)}",
        fontsize=10,
    )
    figure.savefig(path)


def _draw_pooling(result: Mapping[str, Any], path: Path) -> None:
    series = pooling_series(result)
    figure, (axes,) = _figure()
    labels: list[str] = []
    positions: list[float] = []
    width = 0.38
    colors = {"connect per request": "C3", "pooled": "C0"}
    seen: set[str] = set()
    x = 0.0
    for transport, variants in series.items():
        percentiles = [
            label for label, _ in PERCENTILES if all(label in v for v in variants.values())
        ]
        for label in percentiles:
            for offset, (variant, values) in zip(
                (-width / 2, width / 2), variants.items(), strict=False
            ):
                bar = axes.bar(
                    x + offset,
                    values[label],
                    width,
                    color=colors.get(variant),
                    label=variant if variant not in seen else None,
                )
                seen.add(variant)
                axes.bar_label(bar, [f"{values[label]:,.0f}"], fontsize=7, padding=2)
            labels.append(f"{transport}\n{label}")
            positions.append(x)
            x += 1.0
        x += 0.5  # a gap between plain and TLS
    axes.set_xticks(positions, labels)
    axes.set_yscale("log")
    axes.set_ylabel("latency per request, µs (log scale)")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(loc="upper left", fontsize=9)
    ratios = result.get("ratios", {})
    speedups = ", ".join(
        f"{transport} {ratios[key]:.1f}x"
        for transport in series
        if (key := f"{transport.lower()}_speedup") in ratios
    )
    axes.set_title(
        "Sequential 16-byte echo requests, one task: latency without and with pooling\n"
        + ", ".join(
            p
            for p in (f"throughput speed-up {speedups}" if speedups else "", _subtitle(result))
            if p
        ),
        fontsize=10,
    )
    axes.margins(y=0.15)
    figure.savefig(path)


def _draw_spike(result: Mapping[str, Any], path: Path) -> None:
    panels = spike_series(result)
    figure, axes_list = _figure(len(panels), height=1.0 + 2.0 * len(panels), sharex=True)
    for axes, (variant, opened, requests) in zip(axes_list, panels, strict=True):
        if requests:
            starts = [start for start, _ in requests]
            ends = [end for _, end in requests]
            axes.hlines(range(len(requests)), starts, ends, linewidth=1.2, color="C0")
            slowest = max(end - start for start, end in requests)
            axes.set_ylim(-0.5, len(requests) - 0.5)
            axes.yaxis.get_major_locator().set_params(integer=True)
        else:
            slowest = 0.0
        info = [f"{len(requests)} requests"]
        if opened is not None:
            info.append(f"{opened} connections opened")
        info.append(f"slowest {slowest * 1000:.0f} ms")
        axes.set_title(f"{variant}: {', '.join(info)}", fontsize=9, loc="left")
        axes.set_ylabel("request")
        axes.grid(True, axis="x", alpha=0.3)
    axes_list[-1].set_xlabel("seconds from the start of the spike (each line: one request)")
    figure.suptitle(
        f"Connect hand-off spike: when each request ran\n{_subtitle(result)}", fontsize=10
    )
    figure.savefig(path)


def _draw_httpx(result: Mapping[str, Any], path: Path) -> None:
    series = httpx_series(result)
    goal = float(result.get("goal", 0.8))
    figure, (axes,) = _figure()
    width = 0.38
    labels: list[str] = []
    positions: list[float] = []
    x = 0.0
    first = True
    for mode, points in series.items():
        start = x
        for n, ratio, cpu in points:
            for offset, value, color, label in (
                (-width / 2, ratio, "C0", "req/s: c / bound"),
                (width / 2, cpu, "C2", "CPU: (a + b) / c"),
            ):
                bar = axes.bar(
                    x + offset, value, width, color=color, label=label if first else None
                )
                axes.bar_label(bar, [f"{value:.2f}"], fontsize=6, padding=1)
            first = False
            labels.append(f"c={n}")
            positions.append(x)
            x += 1.0
        axes.annotate(
            mode,
            ((start + x - 1.0) / 2, 0),
            xycoords=("data", "axes fraction"),
            xytext=(0, -26),
            textcoords="offset points",
            ha="center",
            fontsize=9,
            fontweight="bold",
        )
        x += 0.5  # a gap between modes
    axes.axhline(goal, color="C3", linestyle="--", linewidth=1.2, label=f"goal {goal}")
    axes.set_xticks(positions, labels, fontsize=7)
    axes.set_ylim(0, max(1.1, axes.get_ylim()[1]))
    axes.set_ylabel("httpx + PoolTransport / glue-free bound")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    axes.set_title(
        "httpx + PoolTransport against 1 / (1/HTTPClient + 1/httpx without I/O)\n"
        + _subtitle(result),
        fontsize=10,
    )
    figure.savefig(path)


def _draw_http2(result: Mapping[str, Any], path: Path) -> None:
    figure, (axes,) = _figure()
    width = 0.38
    points = http2_series(result)
    for x, (_, ratio, cpu) in enumerate(points):
        for offset, value, color, label in (
            (-width / 2, ratio, "C0", "req/s: HTTP/2 / HTTP/1.1 (goal >= 1)"),
            (width / 2, cpu, "C2", "CPU per request: HTTP/2 / HTTP/1.1 (goal <= 1)"),
        ):
            bar = axes.bar(x + offset, value, width, color=color, label=label if x == 0 else None)
            axes.bar_label(bar, [f"{value:.2f}"], fontsize=7, padding=1)
    axes.axhline(1.0, color="C3", linestyle="--", linewidth=1.2, label="parity")
    axes.set_xticks(range(len(points)), [f"c={n}" for n, _, _ in points])
    axes.set_ylim(0, max(1.3, axes.get_ylim()[1]))
    axes.set_ylabel("trio_pool HTTP/2 / trio_pool HTTP/1.1")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    axes.set_title(
        "Our HTTP/2 against our HTTP/1.1 (HTTPS GET to nginx)\n" + _subtitle(result),
        fontsize=10,
    )
    figure.savefig(path)


def _draw_upstream(result: Mapping[str, Any], path: Path) -> None:
    panels = upstream_series(result)
    parameters = result["parameters"]
    step = float(parameters.get("bin_s", 0.1))
    slow_ms = float(parameters.get("slow_ms", 200))
    figure, axes_list = _figure(len(panels), height=1.2 + 2.4 * len(panels), sharex=True)
    for index, (axes, panel) in enumerate(zip(axes_list, panels, strict=True)):
        first = index == 0
        if panel.bins:
            starts = [start for start, _, _ in panel.bins]
            for values, color, label in (
                ([p50 for _, p50, _ in panel.bins], "C0", f"median of each {step * 1e3:.0f} ms"),
                ([top for _, _, top in panel.bins], "C1", f"slowest of each {step * 1e3:.0f} ms"),
            ):
                axes.step(
                    starts,
                    values,
                    where="post",
                    color=color,
                    linewidth=1.3,
                    label=label if first else None,
                )
        if panel.slow:
            axes.scatter(
                [start for start, _ in panel.slow],
                [ms for _, ms in panel.slow],
                s=14,
                marker="x",
                color="C3",
                zorder=3,
                label=f"a request >= {slow_ms:.0f} ms" if first else None,
            )
        axes.axvline(
            panel.stall_s,
            color="0.3",
            linestyle="--",
            linewidth=1.2,
            label="a replica stalls" if first else None,
        )
        if panel.ejected_s is not None:
            axes.axvline(panel.ejected_s, color="C2", linewidth=1.6, label="it is ejected")
        axes.set_yscale("log")
        axes.set_ylabel("latency, ms (log)")
        axes.grid(True, alpha=0.3)
        info = [f"{panel.requests:,} requests", f"{panel.failed} failed"]
        if panel.p99_ms is not None:
            info.append(f"p99 {panel.p99_ms:.1f} ms")
        info.append(f"{len(panel.slow)} >= {slow_ms:.0f} ms")
        info.append(
            "never ejected"
            if panel.ejected_s is None
            else f"ejected {panel.ejected_s - panel.stall_s:.2f} s after the stall"
        )
        axes.set_title(f"{panel.variant}: {', '.join(info)}", fontsize=9, loc="left")
    handles: dict[str, Any] = {}
    for axes in axes_list:
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    axes_list[0].legend(
        handles.values(),
        handles.keys(),
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
    )
    axes_list[-1].set_xlabel("seconds from the run's start (each request at its start)")
    axes_list[-1].set_xlim(0, float(parameters.get("seconds", 0)) or None)
    figure.suptitle(
        "Four replicas, a new connection per request; one replica stops accepting\n"
        + _subtitle(result),
        fontsize=10,
    )
    figure.savefig(path)


CHARTED: dict[str, Callable[[Mapping[str, Any], Path], None]] = {
    "http": _draw_http,
    "pooling": _draw_pooling,
    "spike": _draw_spike,
    "httpx": _draw_httpx,
    "http2": _draw_http2,
    "upstream": _draw_upstream,
}


def write_chart(result: Mapping[str, Any], json_path: Path) -> Path | None:
    """Draw ``result``'s chart as a PNG beside ``json_path`` (same name, ``.png``).

    Returns:
        The PNG's path, or ``None`` if the benchmark has no chart.

    Raises:
        ChartsUnavailable: matplotlib is not installed.
    """
    draw = CHARTED.get(str(result.get("name")))
    if draw is None:
        return None
    path = json_path.with_suffix(".png")
    draw(result, path)
    return path


def main(argv: Sequence[str]) -> int:
    """Re-draw the charts of saved results: ``python -m benchmarks._charts FILE.json...``."""
    for name in argv:
        json_path = Path(name)
        written = write_chart(json.loads(json_path.read_text()), json_path)
        print(written or f"{json_path}: no chart for this benchmark")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
