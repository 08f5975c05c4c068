"""The demo (``python -m trio_pool demo``): its counts, its output and its command line.

Timing is never asserted: the speed-up depends on the machine. Counts do not.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
import trio

import trio_pool
from trio_pool.__main__ import build_parser
from trio_pool.__main__ import main as cli_main
from trio_pool._demo import (
    MODES,
    REQUEST,
    RESPONSE,
    DemoSummary,
    ModeResult,
    _Display,
    run_demo,
    summary_lines,
    table,
)


async def test_demo_counts() -> None:
    out = io.StringIO()
    summary = await run_demo(requests=120, concurrency=4, hosts=2, out=out, live=False)
    assert [r.mode for r in summary.results] == ["tcp-new", "tcp-pooled", "tls-new", "tls-pooled"]
    for result in summary.results:
        assert (result.done, result.errors, result.active) == (120, 0, 0)

    # Without a pool: one connection (and for TLS one full handshake) per request.
    for mode in ("tcp-new", "tls-new"):
        assert summary[mode].connections_created == summary[mode].connections_closed == 120
    assert summary["tls-new"].tls_handshakes == 120
    assert summary["tls-new"].tls_resumptions == 0

    # Pooled: a few connections serve everything, and the pool's invariant holds.
    for mode in ("tcp-pooled", "tls-pooled"):
        pooled = summary[mode]
        assert pooled.hit_rate > 0.9
        assert pooled.hits + pooled.misses == 120
        assert pooled.connections_created <= 2 * 4  # hosts x max_size (= concurrency)
        assert pooled.connections_created - pooled.connections_closed == pooled.idle

    # The TLS connections opened after the first one per host resume its session.
    tls = summary["tls-pooled"]
    assert tls.tls_handshakes == tls.connections_created
    assert 0 < tls.tls_resumptions <= tls.tls_handshakes - 2

    text = out.getvalue()
    assert "\x1b[" not in text  # not a terminal: no ANSI codes
    assert "Summary" in text
    assert "TLS handshakes saved" in text
    assert all(len(line) < 80 for line in summary_lines(summary))
    full = tls.tls_handshakes - tls.tls_resumptions
    assert (
        f"{tls.tls_handshakes} handshakes when pooled: {full} full, {tls.tls_resumptions} resumed"
        in text
    )
    assert summary_lines(summary)[0] in text
    assert " resumed\n" in text  # the TLS column, with TLS modes


async def test_demo_piped_names_each_mode_then_prints_the_table_once() -> None:
    """Not on a terminal: no progress line looks like a result; every figure is in the
    one table at the end."""
    out = io.StringIO()
    summary = await run_demo(requests=40, concurrency=4, hosts=2, tls=False, out=out, live=False)
    lines = out.getvalue().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("mode "))
    before, after = lines[:header], lines[header:]
    progress = [line for line in before if line.startswith("  running ")]
    assert len(progress) == 2
    for number, (line, result) in enumerate(zip(progress, summary.results, strict=True), 1):
        assert re.fullmatch(rf"  running {number}/2: {result.title} \.\.\. \d+\.\d s", line)
    # Each mode's title appears once in the progress, once in the table, and nowhere else.
    for result in summary.results:
        assert sum(line.startswith(result.title) for line in after) == 1
        assert sum(result.title in line for line in lines) == 2
    assert "req/s" not in "\n".join(before)  # no figures before the table


async def test_demo_says_what_a_request_is_and_where_the_servers_run() -> None:
    out = io.StringIO()
    await run_demo(requests=5, concurrency=1, hosts=1, tls=False, out=out, live=False)
    intro = out.getvalue().split("\n\n")[0]
    assert f"one request = send a {len(REQUEST)}-byte line, read its {len(RESPONSE)}-byte" in intro
    assert "the servers run in this process" in intro
    assert all(len(line) < 80 for line in intro.splitlines())


async def test_demo_live_table_without_tls() -> None:
    out = io.StringIO()
    summary = await run_demo(requests=30, concurrency=3, hosts=1, tls=False, out=out, live=True)
    assert [r.mode for r in summary.results] == ["tcp-new", "tcp-pooled"]
    assert summary.speedup(tls=True) is None
    text = out.getvalue()
    assert "\x1b[J" in text  # redrawn in place
    assert "hit rate" in text
    assert "TLS" not in "\n".join(summary_lines(summary))
    assert "TLS" not in text  # no TLS rows, and no TLS column either, live or final
    assert "p99 ms" in text


def test_table_has_a_tls_column_only_with_tls_modes() -> None:
    async def run(tls: bool) -> DemoSummary:
        return await run_demo(requests=8, concurrency=2, hosts=1, tls=tls, out=io.StringIO())

    plain = trio.run(run, False).results
    assert table(plain)[0].endswith("p99 ms")
    assert all(len(line) == len(table(plain)[0]) for line in table(plain)[1:2])
    assert table(plain, tls=True)[0].endswith("resumed")


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("requests", {"requests": 0}),
        ("concurrency", {"concurrency": -1}),
        ("hosts", {"hosts": 1000}),
    ],
)
async def test_demo_rejects_bad_counts(field: str, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=field):
        await run_demo(out=io.StringIO(), **kwargs)


async def test_demo_rejects_non_int() -> None:
    with pytest.raises(TypeError, match="requests"):
        await run_demo(requests=1.5, out=io.StringIO())  # type: ignore[arg-type]


def test_cli_parses_demo_options() -> None:
    args = build_parser().parse_args(
        ["demo", "--requests", "10", "--concurrency", "2", "--hosts", "3", "--no-tls"]
    )
    assert (args.command, args.requests, args.concurrency, args.hosts, args.tls) == (
        "demo",
        10,
        2,
        3,
        False,
    )


def test_cli_rejects_bad_counts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["demo", "--requests", "0"])
    assert info.value.code == 2
    assert "--requests" in capsys.readouterr().err


def test_cli_without_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_python_m_trio_pool() -> None:
    """``python -m trio_pool --help`` documents the demo, and the demo runs end to end."""
    help_text = subprocess.run(
        [sys.executable, "-m", "trio_pool", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "demo" in help_text
    assert "--concurrency" in help_text
    done = subprocess.run(
        [sys.executable, "-m", "trio_pool", "demo", "--requests", "20", "--no-tls"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "TCP, pooled" in done.stdout
    assert "Summary" in done.stdout


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m trio_pool --version`` prints the package's version and exits 0."""
    with pytest.raises(SystemExit) as info:
        cli_main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"trio_pool {trio_pool.__version__}\n"
    done = subprocess.run(
        [sys.executable, "-m", "trio_pool", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == f"trio_pool {trio_pool.__version__}"


def mode_result(mode: str, requests: int, **counts: float) -> ModeResult:
    """A finished mode's result: ``requests`` done, the rest from ``counts``."""
    tls = mode.startswith("tls")
    pooled = mode.endswith("pooled")
    title = next(m.title for m in MODES if m.key == mode)
    fields: dict[str, float] = {
        "errors": 0,
        "seconds": 1.0,
        "connections_created": requests,
        "connections_closed": requests,
        "idle": 0,
        "active": 0,
        "hits": 0,
        "misses": requests,
        "tls_handshakes": requests if tls else 0,
        "tls_resumptions": 0,
        "p50": 0.0125,
        "p99": 0.25,
    }
    fields.update(counts)
    return ModeResult(
        mode=mode,
        title=title,
        pooled=pooled,
        tls=tls,
        total=requests,
        done=requests,
        **fields,  # type: ignore[arg-type]
    )


def big_run(requests: int) -> list[ModeResult]:
    """Every mode at ``requests``, with figures as wide as a fast machine gives."""
    pooled = {
        "seconds": requests / 123_456,  # six-figure req/s
        "connections_created": 22,
        "connections_closed": 0,
        "idle": 22,
        "hits": requests - 20,
        "misses": 20,
    }
    return [
        mode_result("tcp-new", requests, seconds=requests / 1_653),
        mode_result("tcp-pooled", requests, **pooled),
        mode_result("tls-new", requests, seconds=requests / 365, p99=1.5),
        mode_result("tls-pooled", requests, **pooled, tls_handshakes=22, tls_resumptions=18),
    ]


@pytest.mark.parametrize("requests", [1, 2_000, 20_000, 999_999])
@pytest.mark.parametrize("tls", [False, True])
def test_table_fits_80_columns(requests: int, tls: bool) -> None:
    """Every line of the table fits an 80-column terminal (79 characters, so no terminal
    wraps it), its columns line up, and no figure is cut."""
    results = big_run(requests)
    lines = table(results, tls=tls)
    assert all(len(line) <= 79 for line in lines), "\n".join(lines)
    header, rule, *rows = lines
    assert set(rule) == {"-"}
    assert len(rule) == max(len(line) for line in lines)
    # Every cell fits its column: a wider one would push the row past the header's end
    # (the last column is right-aligned, so each row ends where the header does).
    assert all(len(row) == len(header) for row in rows), "\n".join(lines)
    assert f"{requests:,}" in rows[0]


def test_demo_final_table_fits_80_columns() -> None:
    """On an 80-column terminal the final table is printed whole and fits."""
    out = io.StringIO()
    display = _Display(out, live=False, tls=True)
    display.draw(big_run(20_000), final=True)
    assert all(len(line) <= 79 for line in out.getvalue().splitlines())


@pytest.mark.parametrize("requests", [2_000, 20_000])
def test_summary_hit_rate_agrees_with_the_counts_it_shows(requests: int) -> None:
    """The hit rate is followed by the counts it is computed from; no other count
    shown next to it reads as a different rate."""
    summary = DemoSummary(requests, 20, 4, tuple(big_run(requests)))
    lines = summary_lines(summary)
    assert all(len(line) < 80 for line in lines)
    text = "\n".join(lines)
    rates = re.findall(r"hit rate ([\d.]+)% \(([\d,]+) of ([\d,]+) requests", text)
    assert len(rates) == 2, text
    for rate, hits, total in rates:
        assert f"{int(hits.replace(',', '')) / int(total.replace(',', '')):.1%}" == f"{rate}%"
        assert (int(hits.replace(",", "")), int(total.replace(",", ""))) == (
            requests - 20,
            requests,
        )
    # The 22 connections (2 more than the 20 misses) are explained, not left to disagree.
    assert text.count("22 connections opened") == 2
