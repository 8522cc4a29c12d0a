"""``swctl etcd status`` and ``swctl etcd recover-space``: etcd's space, seen and freed.

When etcd's backend reaches its quota it raises the NOSPACE alarm and refuses writes;
the controller-managers' maintenance loop (``shoal.controllers.maintenance``) gets it
out by itself. These verbs are for looking (each member's database size, the alarms)
and for the case the loop could not fix or no manager runs: ``recover-space`` runs the
same idempotent procedure (``shoal.store.maintenance.recover_space``) once and prints
what it did. It needs an admin certificate on a TLS cluster, as etcdctl would.
"""

from __future__ import annotations

import argparse
from typing import Any

from shoal.cli import common, console, errors
from shoal.store import etcd_server, maintenance


def add_parser(verbs: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = verbs.add_parser("etcd", parents=parents, help="etcd's space: status, recover-space",
                         description="Look at etcd's database sizes and alarms, and get it "
                                     "out of the NOSPACE alarm (out of space).")
    sub = p.add_subparsers(dest="etcd_verb", metavar="VERB", required=True)
    status = sub.add_parser("status", parents=parents,
                            help="each member's database size and the alarms raised")
    status.set_defaults(func=run_status, error_code=1)
    recover = sub.add_parser(
        "recover-space", parents=parents,
        help="compact, defragment each member, disarm NOSPACE if that freed enough",
        epilog="example: swctl etcd recover-space --quota-bytes 8589934592")
    recover.add_argument("--quota-bytes", type=_quota_arg, default=etcd_server.QUOTA_BYTES,
                         metavar="BYTES", help="the members' --quota-backend-bytes (default "
                         "4 GiB, what Shoal starts etcd with)")
    recover.add_argument("--force", action="store_true",
                         help="compact and defragment even without an alarm")
    recover.set_defaults(func=run_recover, error_code=1)


def _quota_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f'"{text}" is not a size in bytes: give the members\' '
                                         "--quota-backend-bytes, e.g. 4294967296")
    return value


async def run_status(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    async with common.open_store(opts) as store:
        spaces = await maintenance.spaces(store.etcd)
        alarms = await store.etcd.alarms()
    lines = [f"{'ENDPOINT':<32} {'DB SIZE':>10} {'IN USE':>10}"]
    lines += [f"{s.endpoint:<32} {maintenance.mib(s.db_size):>10} "
              f"{maintenance.mib(s.db_in_use):>10}" for s in spaces]
    lines += [f"alarm: {kind} on member {member:x}" for member, kind in alarms] or \
        ["alarms: none"]
    console.out("\n".join(lines))
    return 0


async def run_recover(args: argparse.Namespace, opts: common.GlobalOptions) -> int:
    async with common.open_store(opts) as store:
        rec = await maintenance.recover_space(store.etcd, args.quota_bytes, force=args.force)
    if rec is None:
        console.out("etcd has no NOSPACE alarm: nothing to do (--force compacts and "
                    "defragments anyway)")
        return 0
    message = maintenance.outcome_message(rec)
    if not rec.disarmed:
        raise errors.CliError(message)
    console.out(message)
    return 0
