"""Real proxies for the tests: tinyproxy (HTTP and CONNECT) and microsocks (SOCKS5).

Each is started on a free 127.0.0.1 port with its config in ``tmp_path``, waited for
until it accepts, and stopped on exit. ``./run tests`` installs both with apt-get; when
one is missing the test is skipped, except under ``CI`` where that fails the run (as the
nginx tests do).

.. code-block:: python

    async with open_tinyproxy(tmp_path, connect_ports=[origin_port]) as proxy:
        conn = await pool.acquire(HOST, origin_port, proxy=proxy.proxy)

Plus the fault-injecting stand-ins (real ``trio.serve_tcp`` servers): :class:`FakeProxy`
answers ``CONNECT`` with whatever a test scripts, and :func:`socks_server` plays a
SOCKS5 server that misbehaves on request.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import trio_pool

from .nginx import free_port
from .servers import HOST, wait_listening

__all__ = [
    "RunningProxy",
    "find_binary",
    "open_microsocks",
    "open_tinyproxy",
    "read_head",
]

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


def find_binary(name: str) -> str:
    """Path of ``name`` (``/usr/bin`` or ``/usr/sbin`` or ``PATH``), or skip the test.

    Under ``CI`` a missing proxy fails the test: ``./run tests`` installs both, and a
    silent skip would hide the proxy tests.
    """
    for directory in ("/usr/bin", "/usr/sbin"):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if found is not None:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed, and CI must run the proxy tests")
    pytest.skip(f"{name} is not installed (apt-get install {name}): proxy test skipped")


class RunningProxy:
    """A proxy process the test started: where it listens and how to reach it."""

    def __init__(
        self, scheme: str, port: int, process: trio.Process, log: Path, auth: tuple[str, str] | None
    ) -> None:
        self.scheme = scheme
        self.port = port
        self.process = process
        self.log_path = log
        self.auth = auth

    @property
    def url(self) -> str:
        """The proxy URL, credentials included."""
        creds = f"{self.auth[0]}:{self.auth[1]}@" if self.auth else ""
        return f"{self.scheme}://{creds}{HOST}:{self.port}"

    def proxy(self, scheme: str | None = None, **options: object) -> trio_pool.Proxy:
        """A :class:`trio_pool.Proxy` for it (``scheme`` overrides, e.g. ``socks5h``)."""
        url = self.url if scheme is None else self.url.replace(self.scheme, scheme, 1)
        return trio_pool.Proxy(url, **options)  # type: ignore[arg-type]

    def log(self) -> str:
        """What the proxy logged so far."""
        return _read(self.log_path)


def _read(log: Path) -> str:
    try:
        return log.read_text(errors="replace")
    except FileNotFoundError:
        return ""


@asynccontextmanager
async def _run(
    name: str, argv: list[str], port: int, log: Path, scheme: str, auth: tuple[str, str] | None
) -> AsyncIterator[RunningProxy]:
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        process = await trio.lowlevel.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd
        )
    finally:
        os.close(log_fd)
    try:
        await wait_listening(
            port, process, lambda: f"{name} exited at start:\n" + _read(log), _START_TIMEOUT
        )
        yield RunningProxy(scheme, port, process, log, auth)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(_STOP_TIMEOUT):
                    await process.wait()
                if process.returncode is None:  # pragma: no cover - it hung
                    process.kill()
            await process.wait()


def tinyproxy_config(
    root: Path, port: int, connect_ports: Sequence[int], auth: tuple[str, str] | None
) -> str:
    """A tinyproxy.conf: 127.0.0.1 only, CONNECT to ``connect_ports`` only, logs in
    ``root``."""
    lines = [
        f"Port {port}",
        f"Listen {HOST}",
        "Timeout 30",
        f"Allow {HOST}",
        f'LogFile "{root}/tinyproxy.log"',
        "LogLevel Info",
        f'PidFile "{root}/tinyproxy.pid"',
        "MaxClients 64",
        "DisableViaHeader Yes",
        *(f"ConnectPort {p}" for p in connect_ports),
    ]
    if auth is not None:
        lines.append(f"BasicAuth {auth[0]} {auth[1]}")
    return "\n".join(lines) + "\n"


@asynccontextmanager
async def open_tinyproxy(
    tmp_path: Path,
    *,
    connect_ports: Sequence[int] = (),
    auth: tuple[str, str] | None = None,
) -> AsyncIterator[RunningProxy]:
    """tinyproxy in the foreground on a free port. ``CONNECT`` is allowed to
    ``connect_ports`` only (tinyproxy allows every port when the list is empty, so give
    at least one); ``auth`` turns on ``BasicAuth``."""
    binary = find_binary("tinyproxy")
    root = tmp_path / f"tinyproxy-{free_port()}"
    root.mkdir(parents=True)
    port = free_port()
    conf = root / "tinyproxy.conf"
    conf.write_text(tinyproxy_config(root, port, connect_ports, auth))
    async with _run(
        "tinyproxy", [binary, "-d", "-c", str(conf)], port, root / "tinyproxy.log", "http", auth
    ) as proxy:
        yield proxy


@asynccontextmanager
async def open_microsocks(
    tmp_path: Path, *, auth: tuple[str, str] | None = None
) -> AsyncIterator[RunningProxy]:
    """microsocks (SOCKS5) on a free 127.0.0.1 port; ``auth`` requires that login."""
    binary = find_binary("microsocks")
    root = tmp_path / f"microsocks-{free_port()}"
    root.mkdir(parents=True)
    port = free_port()
    argv = [binary, "-i", HOST, "-p", str(port)]
    if auth is not None:
        argv += ["-u", auth[0], "-P", auth[1]]
    async with _run("microsocks", argv, port, root / "microsocks.log", "socks5", auth) as proxy:
        yield proxy


# -- fault injection -------------------------------------------------------------------


async def read_head(stream: trio.SocketStream) -> bytes:
    """Read a request head (up to the blank line), at most 64 KiB; ``b""`` at EOF."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        data = await stream.receive_some(4096)
        if not data:
            return b""
        head += data
    return head
