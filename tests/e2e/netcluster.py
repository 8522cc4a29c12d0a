"""An overlay network spread over lab nodes: allocations from the real IPAM turned into
each node's desired NetworkState, plus traffic helpers. Shared by the dataplane tests."""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass, field
from pathlib import Path

from shoal.controllers.allocator.ipam import Allocator
from shoal.net.overlay import Attachment, NetworkState, OverlayNetwork, Peer
from tests.e2e.netlab import Lab, Node, sh

NETTOOL = str(Path(__file__).with_name("nettool.py"))


@dataclass
class Cluster:
    """Allocations for one network across the lab's nodes, turned into per-node state."""

    lab: Lab
    nodes: list[Node]
    alloc: Allocator = field(default_factory=Allocator)
    tasks: dict[str, tuple[int, str]] = field(default_factory=dict)  # task -> (node, netns)
    net: str = "appnet"

    def __post_init__(self) -> None:
        self.alloc.allocate_network(self.net, subnet="10.0.9.0/24")
        for i, _ in enumerate(self.nodes):
            self.alloc.allocate_node_address(self.net, f"node{i}")

    def add_task(self, name: str, node: int) -> str:
        ns = self.lab.ns(name)
        self.alloc.allocate_task_address(self.net, name)
        self.tasks[name] = (node, ns)
        return ns

    def remove_task(self, name: str) -> None:
        self.tasks.pop(name)
        self.alloc.release_task_address(self.net, name)

    def ip(self, task: str) -> str:
        addr = self.alloc.address_of(self.net, "task", task)
        assert addr is not None
        return str(addr)

    def node_ip(self, node: int) -> ipaddress.IPv4Address:
        addr = self.alloc.address_of(self.net, "node", f"node{node}")
        assert addr is not None
        return addr

    def state(self, node: int) -> NetworkState:
        a = self.alloc.network(self.net)
        local = [t for t, (n, _) in self.tasks.items() if n == node]
        if not local:
            return NetworkState()  # the last local task left: the network goes
        peers = [Peer(ipaddress.IPv4Address(self.ip(t)), self.nodes[n].underlay)
                 for t, (n, _) in self.tasks.items() if n != node]
        peers += [Peer(self.node_ip(i), nd.underlay) for i, nd in enumerate(self.nodes)
                  if i != node and any(n == i for n, _ in self.tasks.values())]
        atts = tuple(Attachment(t, self.lab.path(self.tasks[t][1]), "eth0",
                                ipaddress.IPv4Interface(f"{self.ip(t)}/{a.subnet.prefixlen}"))
                     for t in local)
        return NetworkState((OverlayNetwork(self.net, a.vni, a.subnet, self.node_ip(node),
                                            a.vip_range, attachments=atts,
                                            peers=tuple(sorted(peers, key=str))),))


def dump(lab: Lab, ns: str) -> str:
    """Everything sync manages, as the kernel reports it (counters and timers stripped)."""
    parts = [sh("ip", "-n", ns, "-d", "-br", "link").stdout,
             sh("ip", "-n", ns, "-4", "addr").stdout.replace("valid_lft forever", ""),
             sh("ip", "-n", ns, "route").stdout,
             sh("ip", "-n", ns, "neigh", "show", "nud", "permanent").stdout,
             sh("bridge", "-n", ns, "fdb", "show").stdout]
    return "\n".join(parts)


def tcp(lab: Lab, ns: str, host: str, port: int = 7000, count: int = 1,
        retry: float = 20) -> list[str]:
    out = lab.exec(ns, sys.executable, NETTOOL, "tcp", host, str(port), str(count),
                   str(retry), timeout=60).stdout
    return out.split()
