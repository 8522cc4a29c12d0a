"""``swctl dashboard``: the verb's flags. Light on purpose — ``swctl`` imports every verb's
parser at start-up — so the server (aiohttp, informers) is imported only when it runs."""

from __future__ import annotations

import argparse
from typing import Any

from shoal.cli import common, errors

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 8080


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f'invalid port "{text}": expected 0-65535 (0 picks '
                                         "a free one)")
    return value


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dashboard", parents=parents, help="serve a live web view of the cluster",
        description="Serve a live web dashboard of the cluster: nodes with their tasks, "
                    "services, task history, networks and events, updated as they change "
                    "(no reloads). Buttons run swctl's own verbs (scale, node drain/pause/"
                    "activate, delete task, rollout pause/resume/undo). Listens on "
                    "localhost unless --address says otherwise; then every request needs "
                    "the token printed with the URL.",
        epilog="example: swctl dashboard --open | swctl dashboard --address 0.0.0.0 "
               "--port 9000")
    p.add_argument("--address", default=DEFAULT_ADDRESS, metavar="ADDR",
                   help=f"address to listen on (default {DEFAULT_ADDRESS}; any other needs "
                        "the printed token)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, metavar="PORT",
                   help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--open", action="store_true", help="open the page in a browser")
    p.set_defaults(func=run, error_code=1, serves=True)  # Ctrl-C ends it: exit 0


async def run(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    try:
        from shoal.cli.dashboard import server
    except ImportError as exc:  # aiohttp missing from a hand-made install
        raise errors.CliError(f"the dashboard needs {exc.name or 'aiohttp'}: pip install "
                              "aiohttp (it is a dependency of shoal)") from None
    return await server.serve(opts, args.address, args.port, args.open)
