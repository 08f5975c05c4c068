"""A real nginx for the HTTP tests, started on a free 127.0.0.1 port inside ``tmp_path``.

.. code-block:: python

    async def test_x(tmp_path: Path) -> None:
        async with open_nginx(tmp_path) as nginx:
            url = nginx.url("/text")
            ...
            nginx.write_config(keepalive_timeout="2s")
            await nginx.reload()

Locations served (see :func:`nginx_config`): ``/`` (``return 200 "ok"``), ``/text``
(a static file), ``/big`` (a static file of ``BIG_SIZE`` bytes), ``/close``
(``keepalive_timeout 0``: the response carries ``Connection: close``) and ``/empty``
(``return 204``); anything else is a 404.
Everything nginx writes (pid, temp files, the config) stays inside ``tmp_path``;
its error log goes to ``tmp_path/nginx.stderr``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

__all__ = [
    "BIG_SIZE",
    "TEXT",
    "Nginx",
    "find_nginx",
    "free_port",
    "nginx_config",
    "open_nginx",
    "require_nginx",
]

from .servers import HOST, wait_listening

TEXT = b"hello from nginx\n"
BIG_SIZE = 256 * 1024
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


def find_nginx() -> str | None:
    """Path of the nginx binary: ``/usr/sbin/nginx`` or ``nginx`` on ``PATH``."""
    if os.access("/usr/sbin/nginx", os.X_OK):
        return "/usr/sbin/nginx"
    return shutil.which("nginx")


def require_nginx() -> str:
    """Path of the nginx binary, or skip the test when there is none.

    Under ``CI`` a missing nginx fails the test instead: ``./run tests`` installs it, and
    a silent skip there would hide the nginx tests.
    """
    binary = find_nginx()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed, and CI must run the nginx tests")
        pytest.skip("nginx is not installed (apt-get install nginx-light): HTTP test skipped")
    return binary


def free_port() -> int:
    """A free 127.0.0.1 port (bound, then released for the server to take)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def nginx_config(
    root: Path,
    port: int,
    *,
    keepalive_timeout: str = "1s",
    keepalive_requests: int = 7,
    worker_processes: int = 1,
    extra_locations: str = "",
    extra_servers: str = "",
) -> str:
    """The text of an ``nginx.conf`` that keeps every path inside ``root``.

    ``extra_locations`` go into the plain-http server block, ``extra_servers`` (whole
    ``server { ... }`` blocks, e.g. HTTP/2 on TLS) next to it.
    """
    user = "user root;\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
    return f"""\
daemon off;
master_process on;
worker_processes {worker_processes};
{user}error_log stderr warn;
pid {root}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {root}/tmp/client_body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    keepalive_timeout {keepalive_timeout};
    keepalive_requests {keepalive_requests};
    server {{
        listen {HOST}:{port};
        root {root}/www;
        location = / {{ return 200 "ok"; }}
        location = /text {{ try_files /text.txt =404; }}
        location = /big {{ try_files /big.bin =404; }}
        location = /close {{ keepalive_timeout 0; return 200 "bye"; }}
        location = /empty {{ return 204; }}
{extra_locations}
    }}
{extra_servers}
}}
"""


class Nginx:
    """A running nginx: its port, URLs, config file and a reload."""

    def __init__(self, root: Path, port: int, process: trio.Process) -> None:
        self.root = root
        self.port = port
        self.process = process
        self.conf_path = root / "nginx.conf"
        self.binary = find_nginx() or "nginx"

    def url(self, path: str = "/") -> str:
        """``http://127.0.0.1:PORT`` + ``path``."""
        return f"http://{HOST}:{self.port}{path}"

    def write_config(self, **options: object) -> None:
        """Rewrite ``nginx.conf`` (options as for :func:`nginx_config`); call
        :meth:`reload` to apply it."""
        self.conf_path.write_text(nginx_config(self.root, self.port, **options))  # type: ignore[arg-type]

    async def reload(self) -> None:
        """Re-read the config (``nginx -s reload``): new workers start, old ones finish
        their requests and close their idle keep-alive connections."""
        await trio.run_process(
            [
                self.binary,
                "-p",
                str(self.root),
                "-c",
                str(self.conf_path),
                "-e",
                "stderr",
                "-s",
                "reload",
            ],
            capture_stdout=True,
            capture_stderr=True,
        )

    def stderr(self) -> str:
        """What nginx wrote to its error log so far."""
        return (self.root / "nginx.stderr").read_text(errors="replace")


@asynccontextmanager
async def open_nginx(tmp_path: Path, **options: object) -> AsyncIterator[Nginx]:
    """Start nginx in ``tmp_path`` on a free port, wait until it accepts, stop it on exit.

    Skips the test when no nginx binary is installed. ``options`` go to
    :func:`nginx_config`.
    """
    binary = require_nginx()
    root = tmp_path / "nginx"
    for sub in ("www", "tmp", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "www" / "text.txt").write_bytes(TEXT)
    (root / "www" / "big.bin").write_bytes(bytes(range(256)) * (BIG_SIZE // 256))
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(nginx_config(root, port, **options))  # type: ignore[arg-type]
    log_fd = os.open(root / "nginx.stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        process = await trio.lowlevel.open_process(
            [binary, "-p", str(root), "-c", str(conf), "-e", "stderr"],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
        )
    finally:
        os.close(log_fd)
    try:
        await wait_listening(
            port,
            process,
            lambda: "nginx exited at start:\n" + (root / "nginx.stderr").read_text(),
            _START_TIMEOUT,
        )
        yield Nginx(root, port, process)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
                with trio.move_on_after(_STOP_TIMEOUT):
                    await process.wait()
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                    with trio.move_on_after(_STOP_TIMEOUT):
                        await process.wait()
                if process.returncode is None:  # pragma: no cover - nginx hung
                    process.kill()
            await process.wait()
