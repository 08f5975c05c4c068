"""Command line: ``python -m trio_pool demo [options]``, ``python -m trio_pool --version``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from ._demo import DEFAULT_CONCURRENCY, DEFAULT_HOSTS, DEFAULT_REQUESTS, MAX_HOSTS

DESCRIPTION = f"""\
trio_pool, a connection pool for trio.

commands:
  demo    start loopback servers on 127.0.0.1 (plain TCP, and TLS with a CA made on the
          fly) in this process and send the same requests four ways: a new connection per
          request ("no pool"), pooled, a new TLS connection per request, pooled TLS with
          session resumption. A request is one line sent and its answer read. On a
          terminal a live table shows requests done, hit rate, connections opened,
          idle/active, p50/p99 latency and TLS sessions resumed (piped, the table is
          printed once, at the end); the summary gives pooling's speed-up and the
          handshakes it saved. Nothing but 127.0.0.1 is contacted; the defaults take
          about 10-20 s.

demo options:
  --requests N     requests sent each way (default {DEFAULT_REQUESTS})
  --concurrency N  tasks sending requests at once (default {DEFAULT_CONCURRENCY})
  --hosts N        servers on distinct 127.0.0.1 ports, so N pool keys (default {DEFAULT_HOSTS},
                   at most {MAX_HOSTS})
  --no-tls         skip the TLS modes (they need trustme)

examples:
  python -m trio_pool demo
  python -m trio_pool demo --requests 500 --concurrency 50 --hosts 1 --no-tls
  python -m trio_pool --version
"""


def _count(low: int, high: int | None = None) -> type[int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m trio_pool`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m trio_pool",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"trio_pool {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="show pooling's effect live on loopback servers",
        description=(
            "Start request/response servers on 127.0.0.1 in this process and send the same"
            " requests (one line sent, its answer read) through a new connection per request,"
            " a pool, a new TLS connection per request and a TLS pool with session"
            " resumption, showing a table (live on a terminal) and a summary. Nothing but"
            " 127.0.0.1 is contacted. The defaults take about 10-20 s."
        ),
    )
    demo.add_argument(
        "--requests",
        type=_count(1),
        default=DEFAULT_REQUESTS,
        metavar="N",
        help=f"requests sent each way (default {DEFAULT_REQUESTS})",
    )
    demo.add_argument(
        "--concurrency",
        type=_count(1),
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"tasks sending requests at once (default {DEFAULT_CONCURRENCY})",
    )
    demo.add_argument(
        "--hosts",
        type=_count(1, MAX_HOSTS),
        default=DEFAULT_HOSTS,
        metavar="N",
        help=(
            "servers, each on its own 127.0.0.1 port, so N distinct pool keys"
            f" (default {DEFAULT_HOSTS})"
        ),
    )
    demo.add_argument(
        "--no-tls",
        dest="tls",
        action="store_false",
        help="skip the TLS modes (they need trustme)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run it; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import main as demo_main

        return demo_main(
            requests=args.requests,
            concurrency=args.concurrency,
            hosts=args.hosts,
            tls=args.tls,
        )
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
