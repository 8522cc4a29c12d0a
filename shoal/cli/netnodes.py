"""``swctl up --nodes N``: N nodes on one machine, each a network namespace on one bridge.

What it owns: the underlay of a local multi-node cluster and how an agent is started
inside a node. The layout (defaults; every name is recorded in ``cluster.json`` so
``swctl down`` removes exactly what was made)::

    host namespace                        namespace shoal-node-1   (node-1)
    ┌────────────────────────────┐        ┌──────────────────────────────────┐
    │ bridge shoal-ul0           │ veth   │ eth0 172.31.254.11/24, lo        │
    │   172.31.254.1/24  ◀───────┼────────┤ swctl agent --name node-1        │
    │ etcd on 127.0.0.1 and .1   │        │   --address 172.31.254.11        │
    │ dockerd (unix socket)      │        │   (own UTS namespace: hostname   │
    │ controller-manager         │        │    node-1; logs on :4790)        │
    └────────────────────────────┘        └──────────────────────────────────┘
                                           ... shoal-node-2 (.12), shoal-node-3 (.13)

Why this shape (docs/swctl.md, ``up --nodes``): each node gets its own
address and its own link, so cutting a node's veth or killing its agent is a faithful
node failure, and the agents' networking work (VXLAN between node addresses, the log
endpoint on ``status.address``) runs exactly as on separate machines. One dockerd serves
every node: its socket is a file, reachable from any network namespace, and the agent,
not docker, owns task networking. etcd listens on the bridge address (for the agents)
and on 127.0.0.1 (for swctl and the controller-manager on the host).

Addresses come from a private /24 that is unlikely to clash (172.31.254.0/24 unless
``--underlay CIDR``); ``up`` refuses a range that overlaps any address or route on the
host. Node ``i`` (from 1) gets host index ``10 + i``; the host side gets ``.1``. Nothing
is routed or NATed out: traffic stays between the host and the namespaces.

Every step is recorded before it is taken and undone idempotently, so a ``up``
interrupted at any point (or a crashed cluster) is cleaned up by ``down`` (or by the next
``up``), and repeating ``down`` is harmless. The teardown also ends every process left
inside a node's namespace (an agent restarted by hand or by a test, the process driver's
supervisors) before deleting it.

The agent runs inside its node via ``ip netns exec NS python -m shoal.cli.netnodes
exec-as NODE -- python -m shoal.cli agent ...``: each step ``exec``s the next, so the
recorded pid is the agent's own, and ``exec-as`` gives it a UTS namespace of its own
named after the node (what ``status.hostname`` reports).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

import structlog

log = structlog.get_logger("shoal.cli.netnodes")

DEFAULT_BRIDGE: Final = "shoal-ul0"
DEFAULT_SUBNET: Final = "172.31.254.0/24"
DEFAULT_NODE_PREFIX: Final = "node"
HOST_INDEX: Final = 1  # the bridge's (host side's) address: .1
NODE_BASE: Final = 10  # node i gets .(10 + i)
NETNS_PREFIX: Final = "shoal-"
IFNAMSIZ: Final = 15  # longest interface name Linux takes
MTU: Final = 1500
CLONE_NEWUTS: Final = 0x04000000
KILL_GRACE: Final = 3.0  # for processes still inside a namespace at teardown


class NetNodesError(Exception):
    """The underlay cannot be built (not root, names or addresses taken); says why."""


def add_flags(up: argparse.ArgumentParser) -> None:
    """``swctl up`` flags of this feature."""
    up.add_argument("--nodes", type=_count, default=None, metavar="N",
                    help="N nodes, each a network namespace on one underlay bridge running "
                         "its own agent (root only; with --runtime for their driver)")
    up.add_argument("--node-prefix", default=DEFAULT_NODE_PREFIX, metavar="NAME",
                    help=f"with --nodes: nodes are NAME-1..NAME-N (default "
                         f"{DEFAULT_NODE_PREFIX}); their namespaces {NETNS_PREFIX}NAME-i")
    up.add_argument("--underlay", default=DEFAULT_SUBNET, metavar="CIDR",
                    help=f"with --nodes: the underlay range (default {DEFAULT_SUBNET}); the "
                         f"host gets .{HOST_INDEX}, node i .{NODE_BASE}+i")
    up.add_argument("--bridge", default=DEFAULT_BRIDGE, metavar="NAME",
                    help=f"with --nodes: the underlay bridge's name (default {DEFAULT_BRIDGE})")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 200:
        raise argparse.ArgumentTypeError(f'invalid node count "{text}": expected 1..200')
    return value


@dataclasses.dataclass(frozen=True)
class NetNode:
    """One node: its name, namespace, host-side veth and underlay address."""

    name: str
    netns: str
    veth: str
    address: str

    def record(self) -> dict[str, str]:
        return {"name": self.name, "netns": self.netns, "veth": self.veth,
                "address": self.address}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> NetNode:
        return cls(str(data["name"]), str(data["netns"]), str(data["veth"]),
                   str(data["address"]))


@dataclasses.dataclass(frozen=True)
class Underlay:
    """The bridge, its range and the nodes on it: what ``cluster.json`` records under
    ``underlay`` and ``down`` removes."""

    bridge: str
    subnet: str
    host_address: str
    nodes: tuple[NetNode, ...]

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    def etcd_url(self, port: int) -> str:
        """How agents inside the namespaces reach the host's etcd."""
        return f"http://{self.host_address}:{port}"

    def record(self) -> dict[str, Any]:
        return {"bridge": self.bridge, "subnet": self.subnet,
                "hostAddress": self.host_address,
                "nodes": [n.record() for n in self.nodes]}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Underlay:
        return cls(str(data["bridge"]), str(data["subnet"]), str(data["hostAddress"]),
                   tuple(NetNode.from_record(n) for n in data.get("nodes") or []))


def _veth_name(node: str) -> str:
    name = f"sv-{node}"
    if len(name) <= IFNAMSIZ:
        return name
    # Long node names: a stable digest keeps the name unique and within IFNAMSIZ.
    return "sv-" + hashlib.sha1(node.encode()).hexdigest()[:IFNAMSIZ - 3]


def plan(count: int, subnet: str = DEFAULT_SUBNET, bridge: str = DEFAULT_BRIDGE,
         prefix: str = DEFAULT_NODE_PREFIX) -> Underlay:
    """Names and addresses for ``count`` nodes (pure: checks nothing on the host)."""
    try:
        net = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as exc:
        raise NetNodesError(f'invalid --underlay "{subnet}": {exc} (e.g. '
                            f"{DEFAULT_SUBNET})") from None
    if net.num_addresses < NODE_BASE + count + 2:
        raise NetNodesError(f"--underlay {subnet} is too small for {count} nodes (node i "
                            f"gets host index {NODE_BASE}+i)")
    if not bridge or len(bridge) > IFNAMSIZ or "/" in bridge or " " in bridge:
        raise NetNodesError(f'invalid --bridge "{bridge}": an interface name of 1 to '
                            f"{IFNAMSIZ} characters")
    if not prefix or not all(c.isalnum() or c in "-_." for c in prefix):
        raise NetNodesError(f'invalid --node-prefix "{prefix}": letters, digits, "-", "_" '
                            'and "."')
    nodes = []
    for i in range(1, count + 1):
        name = f"{prefix}-{i}"
        nodes.append(NetNode(name, f"{NETNS_PREFIX}{name}", _veth_name(name),
                             str(net.network_address + NODE_BASE + i)))
    veths = {n.veth for n in nodes}
    if len(veths) != len(nodes) or bridge in veths:
        raise NetNodesError(f'--bridge "{bridge}" clashes with the nodes\' link names')
    return Underlay(bridge, str(net), str(net.network_address + HOST_INDEX), tuple(nodes))


# --- host plumbing ---

def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetNodesError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def _json(*args: str) -> list[dict[str, Any]]:
    out = _ip("-j", *args).stdout.strip()
    data = json.loads(out) if out else []
    return data if isinstance(data, list) else []


def require_root() -> None:
    if os.geteuid() != 0:
        raise NetNodesError("--nodes builds network namespaces and a bridge: run as root")
    if shutil.which("ip") is None:
        raise NetNodesError("--nodes needs `ip` (apt-get install iproute2)")


def link_exists(name: str) -> bool:
    return _ip("link", "show", "dev", name, check=False).returncode == 0


def namespaces() -> set[str]:
    return {str(n.get("name")) for n in _json("netns", "list")}


def check_free(underlay: Underlay) -> None:
    """Refuse to build over something that exists: a link, a namespace, or host
    addresses and routes in the underlay range (that traffic would go astray)."""
    taken = [n for n in [underlay.bridge, *(n.veth for n in underlay.nodes)]
             if link_exists(n)]
    if taken:
        raise NetNodesError(f"link {taken[0]} already exists (another cluster's underlay? "
                            "`swctl down` it, or pick --bridge / --node-prefix)")
    existing = namespaces() & {n.netns for n in underlay.nodes}
    if existing:
        raise NetNodesError(f"network namespace {sorted(existing)[0]} already exists "
                            "(another cluster? `swctl down` it, or pick --node-prefix)")
    net = ipaddress.ip_network(underlay.subnet)
    for link in _json("-4", "addr", "show"):
        for addr in link.get("addr_info") or []:
            iface = ipaddress.ip_interface(f"{addr.get('local')}/{addr.get('prefixlen')}")
            if iface.network.overlaps(net):
                raise NetNodesError(f"--underlay {underlay.subnet} overlaps {iface} on "
                                    f"{link.get('ifname')}: pick another range with "
                                    "--underlay CIDR")
    for route in _json("-4", "route", "show"):
        dst = str(route.get("dst") or "")
        if dst in ("", "default"):
            continue
        with contextlib.suppress(ValueError):
            if ipaddress.ip_network(dst, strict=False).overlaps(net):
                raise NetNodesError(f"--underlay {underlay.subnet} overlaps the route to "
                                    f"{dst} (dev {route.get('dev')}): pick another range "
                                    "with --underlay CIDR")


def build_bridge(underlay: Underlay) -> None:
    """The host side: the bridge with the host's underlay address, up."""
    _ip("link", "add", underlay.bridge, "mtu", str(MTU), "type", "bridge")
    _ip("addr", "add", f"{underlay.host_address}/{underlay.prefixlen}", "dev",
        underlay.bridge)
    _ip("link", "set", underlay.bridge, "up")


def open_firewall(underlay: Underlay) -> list[str]:
    """Let the frames bridged between the nodes through the host's firewall; what could
    not be done. The bridge is in the host namespace, so with br_netfilter loaded (Docker
    loads it) every frame between two nodes -- the overlay's VXLAN, their etcd and log
    traffic -- runs through the host's iptables FORWARD chain, whose policy Docker sets
    to DROP: without this, cross-node overlay and routing-mesh traffic times out. One
    ACCEPT rule for exactly this bridge (``hostfw.bridge_rules``), removed by
    :func:`teardown`."""
    from shoal.net import hostfw

    report = asyncio.run(hostfw.HostFirewall(bridge=underlay.bridge).ensure())
    return report.problems


def close_firewall(underlay: Underlay) -> int:
    """Remove :func:`open_firewall`'s rules (comment ``shoal``: only Shoal's; in the host
    namespace of a ``--nodes`` cluster no agent adds others); how many went."""
    from shoal.net import hostfw

    report = asyncio.run(hostfw.HostFirewall(bridge=underlay.bridge).remove())
    for problem in report.problems:
        log.warning("firewall rules left", problem=problem)
    return len(report.changes)


def build_node(underlay: Underlay, node: NetNode) -> None:
    """One node: its namespace (lo up) and a veth whose far end is its ``eth0``."""
    _ip("netns", "add", node.netns)
    _ip("-n", node.netns, "link", "set", "lo", "up")
    _ip("link", "add", node.veth, "mtu", str(MTU), "type", "veth", "peer", "name", "eth0",
        "mtu", str(MTU), "netns", node.netns)
    _ip("link", "set", node.veth, "master", underlay.bridge, "up")
    _ip("-n", node.netns, "addr", "add", f"{node.address}/{underlay.prefixlen}", "dev",
        "eth0")
    _ip("-n", node.netns, "link", "set", "eth0", "up")


def netns_pids(netns: str) -> list[int]:
    proc = _ip("netns", "pids", netns, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _kill_all(pids: Sequence[int], grace: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _alive(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def end_processes(underlay: Underlay, grace: float = KILL_GRACE) -> int:
    """Stop every process still inside the nodes' namespaces; how many there were."""
    pids = [p for n in underlay.nodes for p in netns_pids(n.netns) if p != os.getpid()]
    if pids:
        log.info("stopping processes left in node namespaces", count=len(pids))
        _kill_all(pids, grace)
    return len(pids)


def teardown(underlay: Underlay) -> list[str]:
    """Remove the namespaces, veths and bridge (whichever exist); what was removed.

    Deleting a namespace takes its ``eth0`` and so the host-side veth with it; the
    explicit veth delete is for a build interrupted between the two.
    """
    removed = []
    present = namespaces()
    for node in underlay.nodes:
        if node.netns in present:
            _ip("netns", "del", node.netns, check=False)
            removed.append(f"namespace {node.netns}")
        if link_exists(node.veth):
            _ip("link", "del", node.veth, check=False)
            removed.append(f"link {node.veth}")
    if link_exists(underlay.bridge):
        _ip("link", "del", underlay.bridge, check=False)
        removed.append(f"bridge {underlay.bridge}")
    if close_firewall(underlay):
        removed.append(f"firewall rule for bridge {underlay.bridge}")
    return removed


def agent_argv(node: NetNode, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``node``: its network namespace, a UTS namespace of its own
    with the node's name as hostname. Every step execs the next (same pid)."""
    return ["ip", "netns", "exec", node.netns, sys.executable, "-m", "shoal.cli.netnodes",
            "exec-as", node.name, "--", *argv]


def _new_uts_namespace() -> None:
    # os.unshare arrives in Python 3.12; until then the libc call. A fresh namespace
    # first means sethostname below can never rename the host.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUTS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWUTS): {os.strerror(err)}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m shoal.cli.netnodes exec-as HOSTNAME -- ARGV...``: enter a new UTS
    namespace, name it HOSTNAME, then become ARGV."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 4 or args[0] != "exec-as" or args[2] != "--":
        print("usage: python -m shoal.cli.netnodes exec-as HOSTNAME -- ARGV...",
              file=sys.stderr)
        return 2
    _new_uts_namespace()
    socket.sethostname(args[1])
    os.execvp(args[3], args[3:])
    return 127  # not reached: execvp raises if it cannot run ARGV


if __name__ == "__main__":
    sys.exit(main())
