"""Shared benchmark helpers: timing, percentiles, tables, JSON, and an echo server process.

The echo server runs in its own process (``python benchmarks/_common.py serve ...``) so that
end-to-end numbers measure the client, not a server sharing its event loop. It listens on
every address it is given (distinct loopback addresses ``127.0.x.y`` stand for distinct
hosts: on Linux a socket bound to one of them is reached only through that address), and
exits when its stdin closes, so a crashed benchmark leaves no server behind.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
MESSAGE = b"0123456789abcdef"  # 16 bytes each way: one "request"

__all__ = [
    "HOST",
    "MESSAGE",
    "Tls",
    "callgrind_instructions",
    "echo_server",
    "fmt_us",
    "loopback_hosts",
    "machine",
    "median",
    "now_stamp",
    "percentile",
    "print_table",
    "raise_nofile",
    "rounds_of",
    "tls_files",
    "write_json",
]


# -- numbers ----------------------------------------------------------------------------


def callgrind_instructions(module: str, args: Sequence[str], seed: int | None = None) -> int:
    """User-space instructions of ``python -m <module> client <args...>`` under valgrind's
    callgrind, run from the project's root (with ``PYTHONHASHSEED=seed`` if given).

    Raises:
        RuntimeError: The client failed, or valgrind printed no count.
    """
    env = dict(os.environ)
    if seed is not None:
        env["PYTHONHASHSEED"] = str(seed)
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            module,
            "client",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=env,
    )
    if out.returncode:
        raise RuntimeError(f"the client failed:\n{out.stderr[-3000:]}")
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:  # pragma: no cover - valgrind's output changed
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr}")
    return int(found.group(1))


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile (0-100) by linear interpolation; ``nan`` if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_us(seconds: float) -> str:
    """Seconds as microseconds with 2 decimals."""
    return f"{seconds * 1e6:.2f}"


async def rounds_of(
    rounds: int, variants: dict[str, Callable[[], Awaitable[float]]]
) -> dict[str, list[float]]:
    """Run each variant once per round, interleaved, so drift and noise hit all alike.

    Args:
        rounds: How many rounds.
        variants: Name to an async callable returning one sample (e.g. seconds per op).

    Returns:
        Name to its samples, in round order.
    """
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, measure in variants.items():
            samples[name].append(await measure())
    return samples


# -- output -----------------------------------------------------------------------------


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print an aligned plain-text table (first column left-aligned, the rest right)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )

    print(f"\n== {title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))
    sys.stdout.flush()


def machine() -> dict[str, Any]:
    """Where the numbers come from: cores, memory, Python and trio versions."""
    mem_gib: float | None = None
    try:
        with open("/proc/meminfo") as meminfo:
            for entry in meminfo:
                if entry.startswith("MemTotal:"):
                    mem_gib = round(int(entry.split()[1]) / 1024**2)
                    break
    except OSError:
        pass
    import trio

    return {
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "description": f"{os.cpu_count()} cores, {mem_gib} GiB",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "trio": trio.__version__,
        "platform": platform.platform(),
    }


def now_stamp() -> str:
    """A sortable UTC timestamp for result file names."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def write_json(result: dict[str, Any], json_dir: Path, *, quick: bool, stamp: str) -> Path:
    """Write one benchmark's result, with date and machine, as ``<stamp>-<name>.json``."""
    json_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine(),
        **result,
    }
    path = json_dir / f"{stamp}-{result.get('name', 'unnamed')}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


# -- processes ----------------------------------------------------------------------------


def raise_nofile(wanted: int = 20_000) -> int:
    """Raise this process's open-file soft limit toward ``wanted`` (up to the hard limit).

    Returns:
        The soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def loopback_hosts(count: int) -> list[str]:
    """``count`` distinct loopback addresses 127.0.x.y (x >= 1, so never 127.0.0.1)."""
    return [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(count)]


class Tls:
    """A throw-away CA and a server certificate for ``127.0.0.1`` (trustme), as files."""

    def __init__(self, directory: Path) -> None:
        import trustme

        self.ca = trustme.CA()
        server = self.ca.issue_cert(HOST, "localhost")
        self.certfile = directory / "server.pem"
        server.private_key_and_cert_chain_pem.write_to_path(str(self.certfile))

    def client_context(self) -> Any:
        """An :class:`ssl.SSLContext` trusting the CA."""
        import ssl

        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@contextmanager
def tls_files() -> Iterator[Tls]:
    with tempfile.TemporaryDirectory(prefix="trio-pool-bench-") as directory:
        yield Tls(Path(directory))


@contextmanager
def echo_server(
    hosts: Sequence[str] = (HOST,), *, tls: Tls | None = None, handshake_delay: float = 0.0
) -> Iterator[list[tuple[str, int]]]:
    """Run an echo server in its own process, listening on each of ``hosts``.

    Args:
        hosts: Addresses to listen on.
        tls: Serve TLS with this certificate.
        handshake_delay: TLS only: seconds each new connection waits before the server
            answers its handshake (a slow or far server; connections wait concurrently).

    Yields:
        ``(host, port)`` for each host, in order.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "serve", *hosts]
    if tls is not None:
        command[3:3] = ["--tls", str(tls.certfile)]
        if handshake_delay:
            command[3:3] = ["--delay", repr(float(handshake_delay))]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"echo server failed to start (exit code {proc.wait()})")
        yield [(host, int(port)) for host, port in json.loads(line)]
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- the server process -----------------------------------------------------------------


def _listen(hosts: Sequence[str]) -> list[socket.socket]:
    listeners = []
    for host in hosts:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sock.listen(4096)
        listeners.append(sock)
    return listeners


def _announce(listeners: Sequence[socket.socket]) -> None:
    print(json.dumps([sock.getsockname()[:2] for sock in listeners]), flush=True)


def _serve_plain(hosts: Sequence[str]) -> None:
    """A selectors (epoll) echo server: cheap enough not to be the bottleneck."""
    import selectors

    selector = selectors.DefaultSelector()
    listeners = _listen(hosts)
    for listener in listeners:
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ, "listen")
    selector.register(sys.stdin, selectors.EVENT_READ, "stdin")
    _announce(listeners)
    while True:
        for key, _ in selector.select():
            if key.data == "stdin":
                return
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data == "listen":
                while True:
                    try:
                        conn, _addr = sock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    selector.register(conn, selectors.EVENT_READ, "conn")
                continue
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data:
                try:
                    sent = sock.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    data = b""
                    sent = 0
                if data and sent < len(data):  # rare with 16-byte messages: finish blocking
                    sock.setblocking(True)
                    sock.sendall(data[sent:])
                    sock.setblocking(False)
            if not data:
                selector.unregister(sock)
                sock.close()


def _serve_tls(hosts: Sequence[str], certfile: str, delay: float = 0.0) -> None:
    """A trio TLS echo server (the handshake, not the loop, is what costs here)."""
    import ssl
    import threading

    import trio

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile)
    listeners = _listen(hosts)

    async def echo(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            if delay:  # the handshake happens on the first read: after this
                await trio.sleep(delay)
            async for data in stream:
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.move_on_after(0.5):
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    async def main() -> None:
        tcp = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in listeners]
        ssl_listeners = [trio.SSLListener(t, context, https_compatible=True) for t in tcp]
        _announce(listeners)
        await trio.serve_listeners(echo, ssl_listeners)

    def watch_stdin() -> None:
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    trio.run(main)


def _main(argv: Sequence[str]) -> None:
    if not argv or argv[0] != "serve":
        raise SystemExit("usage: _common.py serve [--delay SECONDS] [--tls CERTFILE] HOST...")
    args = list(argv[1:])
    raise_nofile()
    delay = 0.0
    if args[:1] == ["--delay"]:
        delay = float(args[1])
        args = args[2:]
    if args[:1] == ["--tls"]:
        _serve_tls(args[2:], args[1], delay)
    else:
        _serve_plain(args)


if __name__ == "__main__":
    _main(sys.argv[1:])
