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

from trio_pool.__main__ import build_parser
from trio_pool.__main__ import main as cli_main
from trio_pool._demo import REQUEST, RESPONSE, DemoSummary, run_demo, summary_lines, table


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
    assert "TLS full/res" in text  # the TLS column, with TLS modes


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
    assert table(plain, tls=True)[0].endswith("TLS full/res")


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
