"""The benchmark charts (``benchmarks/_charts.py``) on tiny synthetic results.

What is drawn is checked without matplotlib; that a PNG comes out needs matplotlib (the
``bench`` extra), so those tests are skipped where it is missing (the ``test`` extra
leaves it out: it would double the suite's install time).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks._charts import (
    ChartsUnavailable,
    UpstreamPanel,
    http2_series,
    http_series,
    httpx_series,
    pooling_series,
    spike_series,
    upstream_series,
    write_chart,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def http_result() -> dict[str, Any]:
    rows = []
    table = {
        "trio_pool.http": (5800, 5600, 4200),
        "httpx (httpcore)": (835, 58, 0),
        "aiohttp": (0, 0, 0),  # not installed: left out
        "h11 ceiling": (5300, 4800, 4900),
    }
    for client, values in table.items():
        for n, rps in zip((1000, 10, 100), (values[2], values[0], values[1]), strict=True):
            rows.append({"client": client, "concurrency": n, "requests_per_second": rps})
    return {"name": "http", "date": "2026-12-01T19:00:00+00:00", "results": rows}


def pooling_result() -> dict[str, Any]:
    def row(transport: str, variant: str, p50: float, p90: float, p99: float) -> dict[str, Any]:
        return {
            "transport": transport,
            "variant": variant,
            "p50_us": p50,
            "p90_us": p90,
            "p99_us": p99,
        }

    return {
        "name": "pooling",
        "quick": True,
        "results": [
            row("plain", "connect per request", 700, 900, 1500),
            row("plain", "pooled", 150, 180, 400),
            row("TLS", "connect per request", 4700, 5500, 7600),
            row("TLS", "pooled", 450, 500, 840),
        ],
        "ratios": {"plain_speedup": 4.7, "plain_p99_speedup": 3.7, "tls_speedup": 10.0},
    }


def spike_result() -> dict[str, Any]:
    return {
        "name": "spike",
        "timelines": {
            "before": [[0.0, 0.5], [0.0, 0.02], [0.01, 0.51]],
            "after": [[0.01, 0.03], [0.0, 0.02]],
        },
        "connections_opened": {"before": 3, "after": 2},
    }


def httpx_result() -> dict[str, Any]:
    rows = []
    ratios = {}
    for mode in ("http/1.1", "h2"):
        for n in (100, 10):
            for client in ("HTTPClient", "httpx, no I/O", "httpx + PoolTransport"):
                rows.append({"mode": mode, "client": client, "concurrency": n})
            ratios[f"{mode}@{n}"] = 0.9 if n == 10 else 0.75
            ratios[f"{mode}_cpu@{n}"] = 0.85
    return {"name": "httpx", "quick": True, "results": rows, "ratios": ratios, "goal": 0.8}


def http2_result() -> dict[str, Any]:
    ratios = {}
    for n, value, cpu in ((1000, 1.1, 0.9), (10, 0.8, 1.2), (100, 0.95, 1.05)):
        ratios[f"trio_pool h2/httpcore_h2@{n}"] = 4.0
        ratios[f"trio_pool h2/ours_http11@{n}"] = value
        ratios[f"trio_pool h2_cpu/ours_http11_cpu@{n}"] = cpu
    return {"name": "http2", "quick": True, "results": [], "ratios": ratios}


def upstream_result() -> dict[str, Any]:
    def bins(slowest: float) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = [
            {"start_s": 0.1, "requests": 20, "failed": 0, "p50_ms": 3.0, "max_ms": slowest},
            {"start_s": 0.0, "requests": 20, "failed": 0, "p50_ms": 2.0, "max_ms": 9.0},
        ]
        rows.append({"start_s": 0.2, "requests": 0, "failed": 2, "p50_ms": None, "max_ms": None})
        return rows

    def run(p99: float | None, ejected: float | None, slow: list[list[float]]) -> dict[str, Any]:
        return {
            "requests": 40,
            "failed": 2,
            "p99_ms": p99,
            "slow": len(slow),
            "ejected_after_s": ejected,
            "timeline": bins(max((ms for _, ms in slow), default=9.0)),
            "slow_requests": slow,
        }

    return {
        "name": "upstream",
        "quick": True,
        "parameters": {"seconds": 0.3, "stall_at_s": 0.075, "bin_s": 0.1, "slow_ms": 200.0},
        "runs": {
            "eject_after=5": run(12.5, 0.25, [[0.08, 251.0]]),
            "eject_after=None": run(None, None, [[0.15, 252.0], [0.09, 250.5]]),
        },
        "ratios": {},
    }


def test_upstream_series_per_variant_with_the_stall_and_the_ejection_in_run_time() -> None:
    panels = upstream_series(upstream_result())
    assert panels == [
        UpstreamPanel(
            variant="eject_after=5",
            requests=40,
            failed=2,
            p99_ms=12.5,
            stall_s=0.075,
            ejected_s=0.325,  # the stall plus ejected_after_s
            bins=[(0.0, 2.0, 9.0), (0.1, 3.0, 251.0)],  # in time order; the empty bin left out
            slow=[(0.08, 251.0)],
        ),
        UpstreamPanel(
            variant="eject_after=None",
            requests=40,
            failed=2,
            p99_ms=None,
            stall_s=0.075,
            ejected_s=None,  # never
            bins=[(0.0, 2.0, 9.0), (0.1, 3.0, 252.0)],
            slow=[(0.09, 250.5), (0.15, 252.0)],
        ),
    ]


def test_http2_series_is_ours_against_our_http11_by_concurrency() -> None:
    assert http2_series(http2_result()) == [(10, 0.8, 1.2), (100, 0.95, 1.05), (1000, 1.1, 0.9)]


def test_httpx_series_per_mode_by_concurrency() -> None:
    series = httpx_series(httpx_result())
    assert list(series) == ["http/1.1", "h2"]
    assert series["h2"] == [(10, 0.9, 0.85), (100, 0.75, 0.85)]


def test_http_series_is_sorted_by_concurrency_with_ours_first() -> None:
    series = http_series(http_result())
    assert list(series) == ["trio_pool.http", "httpx (httpcore)", "h11 ceiling"]
    assert series["httpx (httpcore)"] == [(10, 835.0), (100, 58.0), (1000, 0.0)]  # the collapse


def test_pooling_series() -> None:
    series = pooling_series(pooling_result())
    assert series["TLS"]["pooled"] == {"p50": 450.0, "p90": 500.0, "p99": 840.0}
    # An older result without p90 still charts its p50 and p99.
    old = pooling_result()
    for row in old["results"]:
        del row["p90_us"]
    assert pooling_series(old)["plain"]["pooled"] == {"p50": 150.0, "p99": 400.0}


def test_spike_series_sorts_each_variants_requests_by_start() -> None:
    panels = spike_series(spike_result())
    assert panels == [
        ("before", 3, [(0.0, 0.02), (0.0, 0.5), (0.01, 0.51)]),
        ("after", 2, [(0.0, 0.02), (0.01, 0.03)]),
    ]


def test_no_chart_for_other_benchmarks(tmp_path: Path) -> None:
    assert write_chart({"name": "memory", "results": []}, tmp_path / "x-memory.json") is None
    assert list(tmp_path.iterdir()) == []


def test_without_matplotlib_write_chart_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ChartsUnavailable, match="matplotlib"):
        write_chart(http_result(), tmp_path / "x-http.json")


@pytest.mark.parametrize(
    "make",
    [http_result, pooling_result, spike_result, httpx_result, http2_result, upstream_result],
)
def test_chart_is_a_png_beside_the_json(make: Any, tmp_path: Path) -> None:
    result = make()
    json_path = tmp_path / f"20261201-190000-{result['name']}.json"
    path = write_chart(result, json_path)
    assert path == json_path.with_suffix(".png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert 5_000 < len(data) < 200_000
