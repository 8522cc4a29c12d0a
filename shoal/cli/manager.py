"""``swctl controller-manager``: run the built-in controllers in one process.

A thin shell around ``shoal.runtime.manager.run_manager``: it picks the controllers
(``builtin_controllers()``, optionally narrowed with ``--controllers``), names this
process for leader election, and turns SIGTERM/SIGINT into a clean shutdown (leases
released, so another manager takes over at once instead of after the lease TTL).
``swctl up`` starts it as a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import TYPE_CHECKING, Any

from shoal.cli import common, errors

if TYPE_CHECKING:
    from shoal.runtime import manager as runtime_manager


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "controller-manager", parents=parents, help="run the built-in controllers",
        description="Run the built-in controllers, each leader-elected on its own, until "
                    "interrupted. Several managers may run; one leads per controller.")
    p.add_argument("--controllers", metavar="A,B",
                   help="run only these controllers (default: all built-in ones)")
    p.add_argument("--metrics-port", type=int, metavar="N",
                   help="serve Prometheus metrics on this port")
    p.add_argument("--identity", help="leader-election identity (default: HOST-PID-RANDOM)")
    p.set_defaults(func=run, error_code=1, keeps_logging=True)


def select(controllers: list[runtime_manager.Spec],
           wanted: str | None) -> list[runtime_manager.Spec]:
    """The controllers named in ``wanted`` (comma-separated), all when it is empty."""
    if not wanted:
        return controllers
    by_name = {c.name: c for c in controllers}
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        known = ", ".join(sorted(by_name)) or "none yet"
        raise errors.CliError(f"unknown controller{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(unknown)} in --controllers; built-in controllers "
                              f"are: {known}")
    return [by_name[n] for n in names]


async def run(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    # Imported here, not at the top: the runtime and the controllers would slow down the
    # start of every other swctl verb, which never needs them.
    from shoal.cli.controllers import builtin_controllers
    from shoal.runtime import logging as runtime_logging
    from shoal.runtime.manager import run_manager

    runtime_logging.configure()
    controllers = select(builtin_controllers(), args.controllers)
    task = asyncio.ensure_future(run_manager(opts.etcd, opts.prefix, controllers,
                                             args.identity, metrics_port=args.metrics_port,
                                             tls=opts.tls))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass  # asked to stop: not an error
    return 0
