"""TLS: full vs resumed handshakes, and pooled requests vs a new TLS connection each.

The server is the TLS echo server of :mod:`benchmarks._common`, in its own process, with
a trustme certificate for 127.0.0.1: RSA-2048 (what most web servers present) and ECDSA
P-256 (trustme's default, handshakes only); the client pins TLS 1.3 or TLS 1.2 in its
context. All numbers go through the pool, so they are what a user gets:

* handshakes: ``pool.acquire_new`` (TCP connect + handshake) then ``discard``. *Full*
  uses a context the pool has no session for (a new :class:`ssl.SSLContext` each time,
  made beforehand); *resumed* reuses one context, so the pool offers its saved session.
* requests (16 bytes out, the echo back), one task, one after another: a *new TLS
  connection* per request with a full handshake (``trio.open_ssl_over_tcp_stream``, what a
  client without a pool does); a new connection per request that *resumes*
  (``acquire_new`` + ``discard``); and *pooled* (``pool.connection``, hits).

Variants alternate in small blocks so noise hits them alike. Ratios are of mean times:
``full / resumed`` handshake, and ``new connection / pooled`` per request; ``_p50`` ones
of medians, ``_cpu`` ones of this (client) process's CPU time per operation, which a
busy machine distorts less than the wall clock. TLS 1.3 resumption still runs an ECDHE
exchange (``psk_dhe_ke``) and saves only the certificate signature and its checks, so
it gains little with ECDSA certificates and more with RSA ones; TLS 1.2 resumption
skips the key exchange too.
"""

from __future__ import annotations

import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

import trio_pool

from ._common import HOST, MESSAGE, Tls, echo_server, percentile, print_table

BLOCK = 10  # samples of one variant before switching to the next
VERSIONS = {"1.3": ssl.TLSVersion.TLSv1_3, "1.2": ssl.TLSVersion.TLSv1_2}


class _RsaTls(Tls):
    """:class:`Tls` with RSA-2048 keys instead of trustme's default ECDSA P-256."""

    def __init__(self, directory: Path) -> None:
        import trustme

        self.ca = trustme.CA(key_type=trustme.KeyType.RSA)
        server = self.ca.issue_cert(HOST, "localhost", key_type=trustme.KeyType.RSA)
        self.certfile = directory / "server-rsa.pem"
        server.private_key_and_cert_chain_pem.write_to_path(str(self.certfile))


def _context(tls: Tls, version: str) -> ssl.SSLContext:
    """A verifying client context trusting only the test CA (cheap: no system store)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.ca.configure_trust(context)
    context.minimum_version = context.maximum_version = VERSIONS[version]
    return context


async def _request(stream: trio.abc.Stream) -> None:
    await stream.send_all(MESSAGE)
    got = 0
    while got < len(MESSAGE):
        data = await stream.receive_some(len(MESSAGE) - got)
        if not data:
            raise RuntimeError("echo server closed the connection")
        got += len(data)


Sample = tuple[float, float]  # (wall seconds, this process's CPU seconds)


class _Stopwatch:
    """Wall time and client CPU time: on a busy machine the wall clock mostly measures
    the scheduler, the CPU time still measures the work."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def stop(self) -> Sample:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


async def _interleaved(
    samples: int, variants: dict[str, Callable[[], Awaitable[Sample]]]
) -> dict[str, list[Sample]]:
    times: dict[str, list[Sample]] = {name: [] for name in variants}
    while len(next(iter(times.values()))) < samples:
        for name, measure in variants.items():
            for _ in range(min(BLOCK, samples - len(times[name]))):
                times[name].append(await measure())
    return times


async def _measure(
    tls: Tls, port: int, version: str, handshakes: int, requests: int
) -> dict[str, Any]:
    shared = _context(tls, version)
    # The naive and the resumed new-connection variants are slow: a tenth as many.
    slow = max(requests // 10, BLOCK)
    # One unused context per full handshake or naive connection (and a few for the
    # warm-up), made up front: nothing to resume, as for a client without a pool.
    fresh = [_context(tls, version) for _ in range(handshakes + 3)]
    naive_contexts = [_context(tls, version) for _ in range(slow + 3)]

    async with trio_pool.open_pool(max_size=4) as pool:

        async def settle() -> None:
            await trio.testing.wait_all_tasks_blocked()  # close_notify tasks are done

        async def handshake(context: ssl.SSLContext) -> Sample:
            watch = _Stopwatch()
            conn = await pool.acquire_new(HOST, port, tls=True, ssl_context=context)
            elapsed = watch.stop()
            pool.discard(conn)
            await settle()
            return elapsed

        async def full_handshake() -> Sample:
            return await handshake(fresh.pop())

        async def resumed_handshake() -> Sample:
            return await handshake(shared)

        async def new_connection() -> Sample:
            watch = _Stopwatch()
            stream = await trio.open_ssl_over_tcp_stream(
                HOST, port, ssl_context=naive_contexts.pop(), https_compatible=True
            )
            try:
                await _request(stream)
            finally:
                await stream.aclose()
            return watch.stop()

        async def new_resumed_connection() -> Sample:
            watch = _Stopwatch()
            conn = await pool.acquire_new(HOST, port, tls=True, ssl_context=shared)
            try:
                await _request(conn)
            finally:
                pool.discard(conn)
            elapsed = watch.stop()
            await settle()
            return elapsed

        async def pooled() -> Sample:
            watch = _Stopwatch()
            async with pool.connection(HOST, port, tls=True, ssl_context=shared) as conn:
                await _request(conn)
            return watch.stop()

        # Warm up, and give the shared context's key a session (the reply brings the
        # TLS 1.3 ticket).
        async with pool.connection(HOST, port, tls=True, ssl_context=shared) as conn:
            await _request(conn)
        for _ in range(3):
            await full_handshake()
            await resumed_handshake()
            await new_connection()
        before = pool.statistics(HOST, port)
        handshake_times = await _interleaved(
            handshakes, {"full handshake": full_handshake, "resumed handshake": resumed_handshake}
        )
        after = pool.statistics(HOST, port)
        if not requests:
            return {
                "handshakes": handshake_times,
                "requests": {},
                "resumptions": after.tls_resumptions - before.tls_resumptions,
            }
        request_times = await _interleaved(
            slow,
            {
                "new TLS connection / request": new_connection,
                "new resumed connection / request": new_resumed_connection,
                "pooled": pooled,
            },
        )
        request_times["pooled"] += (await _interleaved(requests - slow, {"pooled": pooled}))[
            "pooled"
        ]
    return {
        "handshakes": handshake_times,
        "requests": request_times,
        "resumptions": after.tls_resumptions - before.tls_resumptions,
    }


def _row(key: str, version: str, kind: str, case: str, samples: list[Sample]) -> dict[str, Any]:
    values = [wall for wall, _ in samples]
    mean = sum(values) / len(values)
    return {
        "key": key,
        "tls": version,
        "kind": kind,
        "case": case,
        "samples": len(values),
        "mean_us": mean * 1e6,
        "p50_us": percentile(values, 50) * 1e6,
        "p99_us": percentile(values, 99) * 1e6,
        "client_cpu_us": sum(cpu for _, cpu in samples) / len(samples) * 1e6,
    }


def _ratio(rows: dict[str, dict[str, Any]], case: str, base: str) -> dict[str, float]:
    return {
        "": rows[case]["mean_us"] / rows[base]["mean_us"],
        "_p50": rows[case]["p50_us"] / rows[base]["p50_us"],
        "_cpu": rows[case]["client_cpu_us"] / rows[base]["client_cpu_us"],
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Run the TLS benchmark; print a table and return the JSON-able result."""
    handshakes, requests = (30, 150) if quick else (150, 1500)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trio-pool-bench-tls-") as directory:
        for key, tls in (("RSA", _RsaTls(Path(directory))), ("ECDSA", Tls(Path(directory)))):
            with echo_server(tls=tls) as [(_, port)]:
                for version in VERSIONS:
                    measured = trio.run(
                        _measure, tls, port, version, handshakes, requests if key == "RSA" else 0
                    )
                    if measured["resumptions"] != handshakes:
                        raise RuntimeError(
                            f"TLS {version}: {measured['resumptions']} of {handshakes}"
                            " handshakes resumed; the benchmark would compare the wrong things"
                        )
                    for kind in ("handshakes", "requests"):
                        for case, samples in measured[kind].items():
                            results.append(_row(key, version, kind, case, samples))
    ratios: dict[str, float] = {}
    table = []
    comparisons = (
        ("full handshake", "resumed handshake", "full_vs_resumed_handshake"),
        ("resumed handshake", "resumed handshake", ""),
        ("new TLS connection / request", "pooled", "new_connection_vs_pooled_request"),
        ("new resumed connection / request", "pooled", "new_resumed_vs_pooled_request"),
        ("pooled", "pooled", ""),
    )
    for key in ("RSA", "ECDSA"):
        for version in VERSIONS:
            rows = {r["case"]: r for r in results if r["tls"] == version and r["key"] == key}
            for case, base, name in comparisons:
                if case not in rows:
                    continue
                ratio = _ratio(rows, case, base)
                if name:
                    for suffix, value in ratio.items():
                        ratios[f"{key.lower()}_tls{version}_{name}{suffix}"] = value
                row = rows[case]
                table.append(
                    [
                        f"{key} TLS {version}: {case}",
                        row["samples"],
                        f"{row['mean_us']:.0f}",
                        f"{row['p50_us']:.0f}",
                        f"{row['p99_us']:.0f}",
                        f"{row['client_cpu_us']:.0f}",
                        f"{ratio['']:.2f}x {base}",
                        f"{ratio['_cpu']:.2f}x",
                    ]
                )
    print_table(
        "TLS: handshakes (acquire_new) and sequential 16-byte echo requests",
        ["case", "n", "mean µs", "p50 µs", "p99 µs", "client CPU µs", "mean vs", "CPU vs"],
        table,
    )
    return {"name": "tls", "results": results, "ratios": ratios}


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
