"""``swctl`` entry point: argument parsing, global flags, dispatch to one module per verb.

Global flags (``--etcd``, ``--prefix``, ``--request-timeout``, ``--keyring``) are
accepted before or after the verb, as kubectl accepts them anywhere: they are declared
on a parent parser shared by every subcommand with ``SUPPRESS`` defaults, so a value
given in either place survives and the environment fills in the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

import structlog

from shoal.cli import (
    agent,
    apply,
    changecause,
    cluster,
    common,
    converge,
    delete,
    describe,
    diff,
    errors,
    etcdspace,
    get,
    hints,
    init,
    join,
    logs,
    manager,
    network,
    node,
    rolewatch,
    rollout,
    scale,
    secretverbs,
    service,
    stack,
)
from shoal.cli.dashboard import command as dashboard


class _Parser(argparse.ArgumentParser):
    """argparse with swctl's error shape: ``error: ...`` and a pointer to ``--help``.

    Usage errors exit 1 like every other bad input (2 for ``diff``, whose 1 means
    "differences found"). Subparsers inherit this class from ``add_subparsers``.
    """

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2 if self.prog.endswith(" diff") else 1)


def _global_flags() -> argparse.ArgumentParser:
    flags = _Parser(add_help=False)
    group = flags.add_argument_group("global options")
    group.add_argument("--etcd", metavar="URL", default=argparse.SUPPRESS,
                       help="etcd to talk to: an endpoint URL, or several comma-separated "
                       f"(env SHOAL_ETCD, default {common.DEFAULT_ETCD})")
    group.add_argument("--etcd-ca", metavar="FILE", default=argparse.SUPPRESS,
                       help="the cluster CA certificate, for https etcd endpoints "
                       "(env SHOAL_ETCD_CA)")
    group.add_argument("--etcd-cert", metavar="FILE", default=argparse.SUPPRESS,
                       help="client certificate for etcd; its CN is the etcd user (env "
                       "SHOAL_ETCD_CERT)")
    group.add_argument("--etcd-key", metavar="FILE", default=argparse.SUPPRESS,
                       help="the client certificate's key (env SHOAL_ETCD_KEY)")
    group.add_argument("--prefix", metavar="PREFIX", default=argparse.SUPPRESS,
                       help="key prefix of the cluster in etcd (env SHOAL_PREFIX, default "
                            f"{common.DEFAULT_PREFIX})")
    group.add_argument("--request-timeout", metavar="SECONDS",
                       type=converge.positive_seconds_arg,
                       default=argparse.SUPPRESS,
                       help="how long to wait for etcd to answer before giving up (default 5)")
    group.add_argument("--data-dir", metavar="DIR", default=argparse.SUPPRESS,
                       help="this machine's node data dir, made by `swctl init`/`join` (env "
                            "SHOAL_DATA_DIR, default /var/lib/shoal); without --etcd, swctl "
                            "finds the cluster there")
    group.add_argument("--keyring", metavar="FILE", default=argparse.SUPPRESS,
                       help="the cluster's keyring, to seal and open secret values (env "
                            "SHOAL_KEYRING, default the one `swctl up` made in "
                            "$XDG_STATE_HOME/shoal)")
    return flags


def build_parser() -> argparse.ArgumentParser:
    flags = _global_flags()
    parser = _Parser(
        prog="swctl", parents=[flags],
        description="Control a Shoal cluster: apply manifests, inspect and delete objects, "
                    "run a local cluster.",
        epilog="Run `swctl VERB --help` for the flags of a verb.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in (apply, get, describe, delete, diff, scale, rollout, service, logs, node,
                   network, secretverbs, stack, dashboard, init, join, rolewatch, cluster,
                   manager, agent, etcdspace):
        module.add_parser(sub, [flags])
    return parser


def _quiet_logging() -> None:
    # Library code logs through structlog, which prints to stdout by default; swctl's
    # stdout is for results only, so library warnings go to stderr and chatter is dropped.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=False)


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    nul = next((arg for arg in raw if "\x00" in arg), None)
    if nul is not None:
        # No shell passes one, but a program calling swctl can; every path and name
        # built from it would fail deep inside with "embedded null byte".
        sys.stderr.write(f"error: argument {nul!r} contains a NUL byte; remove it\n")
        return 1
    agent_argv = agent.split_agent_argv(raw)
    if agent_argv is not None:
        # The agent parses its own flags; argparse here would reject them.
        try:
            return agent.run(agent_argv)
        except errors.CliError as exc:
            return errors.report(exc)
    parser = build_parser()
    # Docker's verbs (service rm, stack deploy ...) and unknown flags get the swctl way
    # and the verb's own --help, rather than argparse's list of choices.
    unknown = hints.unknown_command(parser, raw)
    if unknown is not None:
        sys.stderr.write(f"error: {unknown}\n")
        return 1
    args, extras = parser.parse_known_args(raw)
    if extras and args.verb is not None:
        sys.stderr.write(f"error: {hints.unknown_flags(args, extras)}\n")
        return 2 if args.verb == "diff" else 1
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if args.verb is None:
        parser.print_help(sys.stderr)
        return 1
    # What a Service write records as its change cause (``swctl rollout history``).
    args.command_line = changecause.command_line(raw)
    if not getattr(args, "keeps_logging", False):
        _quiet_logging()
    try:
        opts = common.GlobalOptions.resolve(getattr(args, "etcd", None),
                                            getattr(args, "prefix", None),
                                            getattr(args, "request_timeout", None),
                                            getattr(args, "keyring", None),
                                            getattr(args, "etcd_ca", None),
                                            getattr(args, "etcd_cert", None),
                                            getattr(args, "etcd_key", None),
                                            getattr(args, "data_dir", None))
        result = args.func(args, opts)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except BaseException as exc:  # the one place errors become exit codes
        if isinstance(exc, SystemExit):
            raise
        if isinstance(exc, KeyboardInterrupt) and (getattr(args, "watch", False)
                                                   or getattr(args, "serves", False)):
            # Ctrl-C is how `get -w` ends, even before the watch has started, and how a
            # server (`dashboard`) is stopped: the normal end, not a failure.
            return 0
        return errors.report(exc, args.error_code)


if __name__ == "__main__":
    sys.exit(main())
