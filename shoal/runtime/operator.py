"""Entry points for user operators: ``run`` in code, ``main`` at the bottom of a script.

A user's operator is a module of decorated handlers ending in::

    if __name__ == "__main__":
        operator.main()

which parses ``--etcd`` (default ``$SHOAL_ETCD`` or http://127.0.0.1:2379), ``--prefix``
and ``--metrics-port``, configures logging, and runs the handlers — each leader-elected,
so starting the script twice gives a hot standby — until SIGINT/SIGTERM. On the way out
leases are revoked so a standby takes over at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from shoal.pki.bundle import Bundle
from shoal.runtime import decorators, leader, manager
from shoal.runtime import logging as rt_logging

log = rt_logging.get_logger("shoal.runtime.operator")

DEFAULT_ETCD = "http://127.0.0.1:2379"


async def run(etcd_url: str, prefix: str = "/shoal",
              registry: decorators.OperatorRegistry | None = None,
              identity: str | None = None, metrics_port: int | None = None,
              lease_ttl: float = leader.DEFAULT_TTL, tls: Bundle | None = None) -> None:
    """Run ``registry``'s handlers (default: everything decorated with ``@on``)."""
    registry = registry if registry is not None else decorators.default_registry
    if not len(registry):
        log.warning("no handlers registered: decorate functions with @on.reconcile(...) "
                    "before calling run()")
    await manager.run_manager(etcd_url, prefix, registry.controller_specs(), identity,
                              metrics_port, lease_ttl=lease_ttl, tls=tls)


def add_tls_arguments(parser: argparse._ActionsContainer) -> None:
    """``--etcd-ca``, ``--etcd-cert``, ``--etcd-key``: every Shoal process takes them
    (environment: $SHOAL_ETCD_CA, $SHOAL_ETCD_CERT, $SHOAL_ETCD_KEY)."""
    parser.add_argument("--etcd-ca", metavar="FILE", default=None,
                        help="the cluster CA certificate, for https etcd endpoints "
                        "(env SHOAL_ETCD_CA)")
    parser.add_argument("--etcd-cert", metavar="FILE", default=None,
                        help="client certificate to present to etcd; its CN is the etcd "
                        "user (env SHOAL_ETCD_CERT)")
    parser.add_argument("--etcd-key", metavar="FILE", default=None,
                        help="the client certificate's key (env SHOAL_ETCD_KEY)")


def parse_args(argv: Sequence[str] | None, description: str = "Run a Shoal operator.",
               ) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--etcd", default=os.environ.get("SHOAL_ETCD", DEFAULT_ETCD),
                        help="etcd endpoint URL, or several comma-separated (default: "
                        "$SHOAL_ETCD or %(default)s)")
    add_tls_arguments(parser)
    parser.add_argument("--prefix", default=os.environ.get("SHOAL_PREFIX", "/shoal"),
                        help="key prefix of the cluster in etcd (default: %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port")
    parser.add_argument("--identity", default=None,
                        help="leader-election identity (default: host-pid-random)")
    parser.add_argument("--lease-ttl", type=float, default=leader.DEFAULT_TTL,
                        help="leader lease TTL in seconds (default: %(default)s)")
    parser.add_argument("--log-level", default=None,
                        help="debug, info, warning or error (default: $SHOAL_LOG_LEVEL or info)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        args.tls = Bundle.resolve(args.etcd_ca, args.etcd_cert, args.etcd_key)
    except ValueError as exc:
        parser.error(str(exc))
    if args.lease_ttl < 2:
        parser.error(f"--lease-ttl must be at least 2 seconds (etcd's minimum), got "
                     f"{args.lease_ttl}")
    return args


def main(argv: Sequence[str] | None = None,
         registry: decorators.OperatorRegistry | None = None) -> None:
    """Command-line entry point; exits when interrupted (status 0) or on bad arguments."""
    args = parse_args(argv)
    rt_logging.configure(args.log_level)

    async def serve() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is not None:
            with contextlib.suppress(NotImplementedError):  # not on every platform
                loop.add_signal_handler(signal.SIGTERM, task.cancel)
        await run(args.etcd, args.prefix, registry, args.identity, args.metrics_port,
                  args.lease_ttl, tls=args.tls)

    try:
        asyncio.run(serve())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    sys.exit(0)
