"""``swctl up --nodes N --managers M``: a cluster of machines on one machine, built the
way real machines build one -- ``swctl init`` in the first node's namespace, ``swctl
join`` with the manager token in the next M-1, with the worker token in the rest.

What it owns: running those verbs inside the nodes (``netnodes.agent_argv``: each node's
network namespace and a UTS namespace named after it; everything init/join start there
stays there), one after another (etcd admits one new member at a time), and adopting
what they started into ``cluster.json`` so ``swctl down`` stops it (and the namespace
teardown ends anything left). Each node's data dir is ``STATE/nodes/<node>``; swctl on
the host reaches the cluster through the first one (``SHOAL_DATA_DIR``), over the bridge.

Why through the verbs and not by starting processes directly: so the local multi-node
cluster exercises the real bootstrap -- certificates, tokens, the join endpoint, etcd
members over TLS, auth -- that a cluster of machines goes through.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shoal.cli import console, errors, netnodes, nodeprocs
from shoal.join import datadir, protocol

if TYPE_CHECKING:
    from shoal.cli import cluster

JOIN_TIMEOUT = 120.0


def data_dir(state: cluster.ClusterState, node: netnodes.NetNode) -> Path:
    return state.state_dir / "nodes" / node.name


def _run(argv: list[str], what: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=JOIN_TIMEOUT)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()][-5:]
        raise errors.CliError([f"{what} failed (exit code {proc.returncode})",
                               *(f"  {line}" for line in lines)])
    return proc.stdout


def _swctl(state: cluster.ClusterState, node: netnodes.NetNode, *args: str) -> list[str]:
    return [sys.executable, "-m", "shoal.cli", "--data-dir", str(data_dir(state, node)),
            "--prefix", state.prefix, *args]


def _adopt(state: cluster.ClusterState, node: netnodes.NetNode) -> None:
    """Record the processes init/join started in ``node`` as ``up``'s own."""
    from shoal.cli import cluster

    for child in nodeprocs.load(datadir.Layout(data_dir(state, node))):
        state.processes.append(cluster.Child(f"{child.name}-{node.name}", child.pid,
                                             child.argv, child.log, child.started))
    state.save()


def build(args: argparse.Namespace, state: cluster.ClusterState,
          underlay: netnodes.Underlay, runtime: str) -> Path:
    """Init the first node, join the others; the first node's data dir."""
    first, rest = underlay.nodes[0], underlay.nodes[1:]
    # Detached even on a systemd machine: the nodes' processes live in their network
    # namespaces and go with `swctl down`, not as units of the host.
    flags = ["--runtime", runtime, "--no-systemd"]
    state.nodes += [n.name for n in underlay.nodes if n.name not in state.nodes]
    with console.Spinner(f"swctl init in {first.name}"):
        _run(netnodes.agent_argv(first, _swctl(
            state, first, "init", "--advertise-addr", first.address, "--name", first.name,
            *flags)), f"swctl init in {first.name}")
    _adopt(state, first)
    console.out(f"{console.OK} {first.name} initialized the cluster (manager, "
                f"{first.address})")
    tokens = {role: _run(_swctl(state, first, "join-token", "-q", role),
                         f"swctl join-token {role}").strip()
              for role in ("manager", "worker")}
    at = protocol.join_addr(first.address, protocol.DEFAULT_PORT)
    for i, node in enumerate(rest, start=2):
        role = "manager" if i <= args.managers else "worker"
        with console.Spinner(f"swctl join in {node.name} as a {role}"):
            _run(netnodes.agent_argv(node, _swctl(
                state, node, "join", "--token", tokens[role], at, "--advertise-addr",
                node.address, "--name", node.name, *flags)), f"swctl join in {node.name}")
        _adopt(state, node)
        console.out(f"{console.OK} {node.name} joined as a {role} ({node.address})")
    first_dir = data_dir(state, first)
    state.etcd = ",".join(datadir.load_node(datadir.Layout(first_dir)).endpoints)
    state.save()
    return first_dir
