"""``swctl agent``: the node agent's command line (also ``python -m shoal.agent.main``).

Parsing lives here, apart from ``shoal.cli``, so the agent can be started without the CLI
layer (the layering rule says the agent never imports it) and so ``swctl`` wires the verb
in by calling :func:`main` with the remaining arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from shoal.agent import agent, logserver, node, runtimes
from shoal.crds import sealed, selectors, units
from shoal.pki.bundle import Bundle
from shoal.runtime import logging as rt_logging
from shoal.runtime import operator

T = TypeVar("T")

DEFAULT_ETCD = "http://127.0.0.1:2379"
DEFAULT_PREFIX = "/shoal"


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'invalid rate "{text}": expected 0..1') from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'invalid rate "{text}": expected 0..1')
    return value


def _arg_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a parser that raises ValueError, keeping its message."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


_seconds = _arg_type(units.parse_duration)
_memory = _arg_type(units.parse_size)
_cpus = _arg_type(units.parse_cpus)
_label = _arg_type(selectors.parse_label)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'invalid count "{text}": expected an integer') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'invalid count "{text}": must be at least 1')
    return value




def _logs_port(text: str) -> int | None:
    if text == "off":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f'invalid port "{text}": expected 0..65535 or off')
    return value


def build_parser(prog: str = "swctl agent") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Run the Shoal node agent: register this node (or K hollow "
        "nodes), keep its heartbeat lease, and run the tasks assigned to it.")
    p.add_argument("--etcd", default=None,
                   help="etcd endpoint URL, or several comma-separated (default: "
                   f"$SHOAL_ETCD or {DEFAULT_ETCD})")
    operator.add_tls_arguments(p)
    p.add_argument("--tls-dir", metavar="DIR", default=None,
                   help="the node's certificate: DIR/ca.crt, DIR/node.crt, DIR/node.key. Its "
                   "endpoints (task logs) then serve TLS to the cluster's admin certificate "
                   "only; it is also the etcd client certificate when --etcd-cert is not given")
    p.add_argument("--prefix", default=None,
                   help=f"key prefix of the cluster (default: $SHOAL_PREFIX or {DEFAULT_PREFIX})")
    p.add_argument("--name", default=None, help="node name (default: the hostname)")
    p.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE",
                   help="node label, matched by node.labels.KEY constraints (repeatable)")
    p.add_argument("--role", choices=("manager", "worker"), default="worker",
                   help="role given to a newly registered node (default: worker)")
    p.add_argument("--runtime", choices=(runtimes.AUTO, *agent.RUNTIMES),
                   default=runtimes.AUTO,
                   help="how tasks run: auto (the default, as `swctl up` chooses) is docker "
                        "when dockerd answers or can be started, else process; hollow "
                        "simulates tasks that run nothing (for tests and scale trials)")
    p.add_argument("--count", type=_positive_int, default=1, metavar="K",
                   help="with --runtime hollow: serve K simulated nodes named "
                        "NAME-0..NAME-K-1 from this process")
    p.add_argument("--heartbeat-ttl", type=_seconds, default=3.0, metavar="SECONDS",
                   help="heartbeat lease TTL; whole seconds, at least 1 (default: 3)")
    p.add_argument("--stall-timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="let the heartbeat lapse when the agent's event loop has been "
                        "stuck this long (default: 10 s or 3 x TTL, whichever is longer)")
    p.add_argument("--shared-lease", action="store_true",
                   help="with --count: one heartbeat lease for all nodes of the process "
                        "(fewer keepalives; the nodes then fail together)")
    p.add_argument("--hollow-start-delay", type=_seconds, default=0.1, metavar="SECONDS",
                   help="hollow: time from start to running (default: 0.1)")
    p.add_argument("--fail-rate", type=_fraction, default=0.0, metavar="RATE",
                   help="hollow: share of tasks that exit 1 soon after running (0..1)")
    p.add_argument("--seed", type=int, default=None,
                   help="hollow: seed of the --fail-rate random choices")
    p.add_argument("--hollow-state", default=None, metavar="FILE",
                   help="hollow: keep fake workloads in FILE so a restarted agent adopts them")
    p.add_argument("--address", default=None,
                   help="node underlay address (default: the address that reaches etcd, "
                        "else the first non-loopback IPv4, else 127.0.0.1)")
    p.add_argument("--logs-port", type=_logs_port, default=logserver.DEFAULT_PORT,
                   metavar="N|off",
                   help="serve task logs to `swctl logs` on this port of the node's address "
                        f"(default {logserver.DEFAULT_PORT}; 0: any free port; off: none)")
    p.add_argument("--dataplane", choices=("auto", "nftables", "ipvs", "none"),
                   default="auto",
                   help="task networking: auto picks IPVS when the kernel has it, else "
                        "nftables; none runs tasks without networks (default: auto; "
                        "hollow nodes never have one)")
    p.add_argument("--state-dir", default=agent.DEFAULT_STATE_DIR, metavar="DIR",
                   help="where the agent keeps generated files such as the tasks' "
                        "resolv.conf (default: /run/shoal)")
    p.add_argument("--keyring", default=None, metavar="PATH",
                   help="the cluster's keyring, which opens the secrets of this node's "
                        f"tasks (default: ${sealed.KEYRING_ENV}; swctl up passes its own)")
    p.add_argument("--drain", type=_seconds, default=1.0, metavar="SECONDS",
                   help="how long a task that leaves the load balancer (shut down, "
                        "replaced, unhealthy) keeps running before it is stopped, so "
                        "every node stops sending it connections first (default: 1)")
    p.add_argument("--cpus", type=_cpus, default=None,
                   help="advertised CPUs (default: the host's CPU count)")
    p.add_argument("--memory", type=_memory, default=None,
                   help="advertised memory, e.g. 8Gi (default: the host's total memory)")
    p.add_argument("--concurrency", type=_positive_int, default=32,
                   help="tasks reconciled at once per node (default: 32)")
    p.add_argument("--log-level", default=os.environ.get("SHOAL_LOG_LEVEL", "info"),
                   choices=("debug", "info", "warning", "error"),
                   help="log level (default: $SHOAL_LOG_LEVEL or info)")
    p.add_argument("--log-format", default="auto", choices=("auto", "console", "json"),
                   help="log lines on stderr: console, json, or auto (console on a "
                        "terminal, JSON otherwise; the default)")
    return p


def configure_logging(level: str, fmt: str) -> None:
    """The runtime's structlog set-up, shared by every Shoal process (``auto``: console
    lines on a terminal, JSON otherwise)."""
    rt_logging.configure(level, json=None if fmt == "auto" else fmt == "json")


def config_from_args(args: argparse.Namespace) -> agent.AgentConfig:
    node_tls = Bundle.from_dir(args.tls_dir, "node") if args.tls_dir else None
    # One certificate per node: with --tls-dir and no --etcd-* (or $SHOAL_ETCD_*), the
    # node's certificate is also what it presents to etcd.
    etcd_url = args.etcd or os.environ.get("SHOAL_ETCD") or DEFAULT_ETCD
    etcd_tls = Bundle.resolve(args.etcd_ca, args.etcd_cert, args.etcd_key)
    if etcd_tls is None and etcd_url.startswith("https://"):
        etcd_tls = node_tls
    return agent.AgentConfig(
        etcd_url=etcd_url,
        prefix=args.prefix or os.environ.get("SHOAL_PREFIX") or DEFAULT_PREFIX,
        node_name=args.name or socket.gethostname(),
        runtime=args.runtime, count=args.count, labels=dict(args.label), role=args.role,
        heartbeat_ttl=float(node.lease_ttl(args.heartbeat_ttl)), address=args.address,
        cpus=args.cpus, memory=args.memory, hollow_start_delay=args.hollow_start_delay,
        fail_rate=args.fail_rate, seed=args.seed, hollow_state=args.hollow_state,
        shared_lease=args.shared_lease, concurrency=args.concurrency,
        log_level=args.log_level, log_format=args.log_format,
        stall_timeout=args.stall_timeout, logs_port=args.logs_port,
        dataplane=args.dataplane, state_dir=args.state_dir, drain=args.drain,
        keyring=args.keyring or os.environ.get(sealed.KEYRING_ENV) or None,
        etcd_tls=etcd_tls, node_tls=node_tls)


async def _serve(cfg: agent.AgentConfig) -> None:
    task = asyncio.ensure_future(agent.Agent(cfg).run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass  # asked to stop: the agent has revoked its leases and closed its drivers


def hollow_only_flags(args: argparse.Namespace) -> list[str]:
    """Flags given that only mean something to simulated nodes."""
    given = []
    if args.count > 1:
        given.append("--count")
    if args.fail_rate:
        given.append("--fail-rate")
    if args.hollow_state:
        given.append("--hollow-state")
    return given


def resolve_runtime(args: argparse.Namespace) -> str:
    """The runtime this agent uses: hollow only when asked for, else ``runtimes.choose``
    (the choice ``swctl up`` makes); a notice on stderr says why auto fell back."""
    if args.runtime == "hollow":
        return "hollow"
    stray = hollow_only_flags(args)
    if stray:
        raise runtimes.RuntimeUnavailable(
            f"{', '.join(stray)} {'only apply' if len(stray) > 1 else 'only applies'} to "
            "simulated nodes: add --runtime hollow, or drop "
            f"{'them' if len(stray) > 1 else 'it'} to run real tasks on this node")
    picked = runtimes.choose(args.runtime)
    if picked.fallback:
        print(f"swctl agent: {picked.fallback}; tasks run with the process runtime "
              "(pass --runtime docker to insist)", file=sys.stderr)
    return picked.runtime


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        args.runtime = resolve_runtime(args)
        cfg = config_from_args(args)
        if cfg.runtime != "hollow":
            agent.driver_class(cfg.runtime)
    except (agent.UnknownRuntimeError, runtimes.RuntimeUnavailable, ValueError) as exc:
        print(f"swctl agent: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
