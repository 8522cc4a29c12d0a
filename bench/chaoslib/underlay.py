"""The ``--netns`` underlay of a chaos run: one network namespace per node on a bridge.

What it owns: the links a partition or netem fault acts on. Each node gets a namespace
with ``eth0`` (its veth's inside end) on ``<subnet>.(10 + i)/24``; the host ends sit on a
bridge in the root namespace holding ``<subnet>.1``, where every etcd member also serves
clients, so a node's only way to etcd is its veth: the node's "underlay link", as a
machine's NIC would be. Cutting it (``ip link set down``) is a partition; ``tc netem`` on
both ends is a lossy, slow link.

Every name starts with a per-run prefix ``shc<pid in hex>`` (bridge ``<prefix>-br``, namespace
and host veth ``<prefix>-n<i>``), so concurrent runs and other tests never collide, and a
run killed before it could clean up is recognised by the next one: its prefix names a pid
that is gone, and ``sweep`` deletes what it left. The /24 is ``10.231.X.0/24`` with X the
first not already routed on the host.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import subprocess

import structlog

from shoal.cli import cluster

log = structlog.get_logger("bench.chaos.underlay")

FAMILY = "shc"
_OWNED = re.compile(rf"^{FAMILY}([0-9a-f]+)-")


class UnderlayError(Exception):
    """The underlay could not be built (not root, no ``ip``/``tc``): says why."""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise UnderlayError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def sweep() -> list[str]:
    """Delete namespaces and links a killed chaos run left (its pid is gone)."""
    removed: list[str] = []
    names = [line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines()
             if line.strip()]
    links = [str(link["ifname"]) for link in json.loads(sh("ip", "-j", "link").stdout or "[]")]
    for name in names:
        m = _OWNED.match(name)
        if m and not cluster.pid_alive(int(m.group(1), 16)):
            sh("ip", "netns", "del", name, check=False)
            removed.append(name)
    for link in links:
        m = _OWNED.match(link)
        if m and not cluster.pid_alive(int(m.group(1), 16)):
            sh("ip", "link", "del", link, check=False)
            removed.append(link)
    if removed:
        log.info("removed a previous run's underlay", names=removed)
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    routed = []
    for route in json.loads(sh("ip", "-j", "-4", "route", "show", "table", "all").stdout
                            or "[]"):
        dst = str(route.get("dst", ""))
        if dst and dst != "default":
            try:
                routed.append(ipaddress.ip_network(dst, strict=False))
            except ValueError:
                continue
    for x in range(256):
        net = ipaddress.IPv4Network(f"10.231.{x}.0/24")
        if not any(net.overlaps(r) for r in routed if r.prefixlen > 0):
            return net
    raise UnderlayError("no free /24 in 10.231.0.0/16 for the chaos underlay")


@dataclasses.dataclass(frozen=True)
class Link:
    node: str
    netns: str
    veth: str  # host end, on the bridge
    address: str


class Underlay:
    def __init__(self, nodes: list[str]) -> None:
        if os.geteuid() != 0:
            raise UnderlayError("--netns needs root (network namespaces and links)")
        self.prefix = f"{FAMILY}{os.getpid():x}"
        self.bridge = f"{self.prefix}-br"
        self.subnet = _free_subnet()
        self.host_address = str(self.subnet.network_address + 1)
        self.links = {n: Link(n, f"{self.prefix}-n{i}", f"{self.prefix}-n{i}",
                              str(self.subnet.network_address + 10 + i))
                      for i, n in enumerate(nodes)}
        self.delay_applied: bool | None = None  # netem's delay (None: not tried yet)
        if any(len(link.veth) > 15 for link in self.links.values()):
            raise UnderlayError(f"interface names from prefix {self.prefix} exceed 15 chars")

    def up(self) -> None:
        """Build bridge, namespaces and veths (after sweeping a killed run's leftovers)."""
        sweep()
        self.down()  # a previous run with this very pid (recycled) left something
        plen = self.subnet.prefixlen
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.host_address}/{plen}", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for link in self.links.values():
            sh("ip", "netns", "add", link.netns)
            sh("ip", "-n", link.netns, "link", "set", "lo", "up")
            sh("ip", "link", "add", link.veth, "type", "veth", "peer", "name", "eth0",
               "netns", link.netns)
            sh("ip", "link", "set", link.veth, "master", self.bridge, "up")
            sh("ip", "-n", link.netns, "addr", "add", f"{link.address}/{plen}", "dev", "eth0")
            sh("ip", "-n", link.netns, "link", "set", "eth0", "up")
        log.info("underlay up", bridge=self.bridge, subnet=str(self.subnet),
                 nodes=len(self.links))

    def down(self) -> None:
        """Remove everything of this run (idempotent; deleting a namespace takes its
        veth pair with it)."""
        for link in self.links.values():
            sh("ip", "netns", "del", link.netns, check=False)
            sh("ip", "link", "del", link.veth, check=False)
        sh("ip", "link", "del", self.bridge, check=False)

    def exec_argv(self, node: str) -> list[str]:
        return ["ip", "netns", "exec", self.links[node].netns]

    # --- faults ---

    def cut(self, node: str) -> None:
        sh("ip", "link", "set", self.links[node].veth, "down")

    def heal(self, node: str) -> None:
        sh("ip", "link", "set", self.links[node].veth, "up")

    def degrade(self, node: str, loss: int = 30, delay_ms: int = 100) -> None:
        """netem on both ends, so both directions lose and wait. A kernel without
        sch_netem (some VMs' kernels have no modules) gets the loss alone, from an
        nftables random drop in the node's namespace; ``delay_applied`` says which."""
        link = self.links[node]
        rule = ["root", "netem", "loss", f"{loss}%", "delay", f"{delay_ms}ms"]
        if self.delay_applied is not False:
            proc = sh("tc", "qdisc", "replace", "dev", link.veth, *rule, check=False)
            if proc.returncode == 0:
                self.delay_applied = True
                sh("ip", "netns", "exec", link.netns, "tc", "qdisc", "replace", "dev", "eth0",
                   *rule)
                return
            if "unknown" not in proc.stderr.lower():
                raise UnderlayError(f"tc qdisc replace dev {link.veth} netem: "
                                    f"{proc.stderr.strip()}")
            self.delay_applied = False
            log.warning("no netem qdisc in this kernel: packet loss only, by nftables")
        drop = f"numgen random mod 100 < {loss} drop"
        ruleset = (f"table inet {FAMILY}loss {{\n"
                   f"  chain in {{ type filter hook input priority 0; {drop}; }}\n"
                   f"  chain out {{ type filter hook output priority 0; {drop}; }}\n}}\n")
        proc = subprocess.run(["ip", "netns", "exec", link.netns, "nft", "-f", "-"],
                              input=ruleset, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise UnderlayError(f"nft in {link.netns}: {proc.stderr.strip()}")

    def restore(self, node: str) -> None:
        link = self.links[node]
        sh("tc", "qdisc", "del", "dev", link.veth, "root", check=False)
        sh("ip", "netns", "exec", link.netns, "tc", "qdisc", "del", "dev", "eth0", "root",
           check=False)
        sh("ip", "netns", "exec", link.netns, "nft", "delete", "table", "inet",
           f"{FAMILY}loss", check=False)
