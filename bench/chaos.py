"""Chaos benchmark (issue 16): a busy 3-manager cluster under random faults, checked.

    python -m bench.chaos --seed S --duration 600 --nodes 5 [--max-faults N] [--keep]

Builds 3 etcd members (mutual TLS), 3 controller-managers and ``--nodes`` agents
(bench/chaoslib/cluster.py); runs a workload of applies, scales, rolling updates, drains
and stack deploys (workload.py) while a seeded injector SIGKILLs and SIGSTOPs controller-
managers, agents, heartbeat children and etcd members and steps agents' and controller-
managers' wall clocks (faults.py, clocks.py); ``--process-nodes K``: K nodes run real
processes. One watch checks every revision against the invariants (invariants.py); what
the nodes run is checked against etcd (hosts.py). Prints faults by kind, violations with
their keys and revisions, convergence after the last fault (cluster-wide and per service,
p50/p99/max), recovery per fault and per service, and the seed to replay.
Exit status 1 when any invariant was violated or a service did not converge.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
from pathlib import Path

from bench.chaoslib import clocks
from bench.chaoslib.faults import CLOCK_KINDS, KINDS, NET_KINDS, SPACE_KINDS
from bench.chaoslib.run import run
from bench.common import load_average, say


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: new)")
    parser.add_argument("--duration", type=float, default=600.0,
                        help="seconds of faults and workload (default 600)")
    parser.add_argument("--nodes", type=int, default=5, help="hollow nodes (default 5)")
    parser.add_argument("--max-faults", type=int, default=None,
                        help="stop injecting after this many faults")
    parser.add_argument("--settle", type=float, default=120.0,
                        help="seconds allowed to converge after the last fault")
    parser.add_argument("--no-stack", dest="stack", action="store_false",
                        help="leave stack deploys out of the workload")
    parser.add_argument("--kinds", default=None,
                        help=f"comma-separated fault kinds (default: all of {','.join(KINDS)}, "
                             f"and with --netns {','.join(NET_KINDS)})")
    parser.add_argument("--fault-gap", type=float, nargs=2, default=(1.0, 6.0),
                        metavar=("MIN", "MAX"),
                        help="seconds between two faults, drawn uniformly (default 1 6)")
    parser.add_argument("--hold", type=float, nargs=2, default=(0.5, 5.0),
                        metavar=("MIN", "MAX"),
                        help="seconds a fault is held before it is put back (default 0.5 5)")
    parser.add_argument("--netns", action="store_true",
                        help="each node in its own network namespace on a bridge (root); "
                             f"adds the link fault kinds {','.join(NET_KINDS)}")
    parser.add_argument("--etcd-quota", type=int, default=None, metavar="MIB",
                        help="run the etcd members with this --quota-backend-bytes (MiB, "
                             f"e.g. 64); adds the fault kind {','.join(SPACE_KINDS)}")
    parser.add_argument("--process-nodes", type=int, default=0, metavar="K",
                        help="the first K nodes run real processes (--runtime process) "
                             "instead of hollow workloads (default 0)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args()
    no_clocks = clocks.unavailable()
    known = (*KINDS, *(CLOCK_KINDS if no_clocks is None else ()),
             *(NET_KINDS if args.netns else ()))
    if args.etcd_quota is not None:
        if args.etcd_quota < 16:
            parser.error(f"--etcd-quota {args.etcd_quota}: give at least 16 (MiB): the "
                         "cluster's own data must fit beside the junk")
        known = (*known, *SPACE_KINDS)
    kinds = known if args.kinds is None else tuple(k for k in args.kinds.split(",") if k)
    unknown = sorted(set(kinds) - set(known))
    if unknown:
        if set(unknown) & set(SPACE_KINDS):
            parser.error(f"--kinds: {','.join(SPACE_KINDS)} needs --etcd-quota MIB (a small "
                         "quota to fill)")
        needs = [k for k in unknown if k in NET_KINDS]
        if unknown == list(CLOCK_KINDS):
            parser.error(f"--kinds: clock-jump cannot be injected: {no_clocks}")
        parser.error(f"--kinds: {', '.join(needs)} need --netns (a node link to act on)"
                     if needs and len(needs) == len(unknown) else
                     f"--kinds: unknown fault kind {', '.join(unknown)}; the kinds are "
                     f"{', '.join(known)}")
    if not 0 <= args.process_nodes <= args.nodes:
        parser.error(f"--process-nodes: {args.process_nodes} is not between 0 and --nodes "
                     f"({args.nodes})")
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    where = " in network namespaces" if args.netns else ""
    say(f"bench/chaos.py: seed {seed}, {args.nodes} nodes ({args.process_nodes} "
        f"process-runtime, the rest hollow){where}, 3 etcd members "
        f"(mutual TLS), 3 controller-managers, {args.duration:g} s; load average "
        f"{load_average()}")
    workdir = Path(tempfile.mkdtemp(prefix="shoal-chaos-"))
    try:
        result = asyncio.run(run(workdir, seed, args.duration, args.nodes,
                                 max_faults=args.max_faults, settle=args.settle,
                                 stack=args.stack, fault_gap=tuple(args.fault_gap),
                                 kinds=kinds, hold=tuple(args.hold), netns=args.netns,
                                 etcd_quota=(args.etcd_quota * 1024 * 1024
                                             if args.etcd_quota else None),
                                 process_nodes=args.process_nodes,
                                 clocks=any(k in CLOCK_KINDS for k in kinds)))
    finally:
        if args.keep:
            say(f"logs in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    for line in result.lines():
        say(line)
    say(f"load average after: {load_average()}")
    return 1 if result.violations or result.unconverged else 0


if __name__ == "__main__":
    sys.exit(main())
