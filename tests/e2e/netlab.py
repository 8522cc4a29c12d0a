"""A throw-away network lab for dataplane tests: namespaces only this test owns.

Every namespace name starts with a per-lab random prefix, so parallel runs never collide,
and everything the lab made lives inside its namespaces: deleting them (``close``, called
from fixture finalizers even when a test fails) removes every link, address, route and
nftables table with them. Nothing is created in the host namespace and no traffic leaves
the lab: underlay addresses are from 198.18.0.0/15 (the benchmarking range), inside the
lab's own namespaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field

NETNS_DIR = "/var/run/netns"


def have_netns_privileges() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def sh(*argv: str, check: bool = True, timeout: float = 30, input: str | None = None
       ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True,
                          timeout=timeout, input=input)


@dataclass
class Node:
    """A fake node: a namespace with one leg on the lab's underlay bridge."""

    ns: str
    underlay: ipaddress.IPv4Address


@dataclass
class Lab:
    prefix: str = field(default_factory=lambda: "sx" + secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    fabric: str | None = None
    _nodes: int = 0

    def ns(self, suffix: str) -> str:
        """Create a namespace ``<prefix>-<suffix>`` with lo up; return its name."""
        name = f"{self.prefix}-{suffix}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def path(self, ns: str) -> str:
        return f"{NETNS_DIR}/{ns}"

    def exec(self, ns: str, *argv: str, check: bool = True, timeout: float = 30
             ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)

    def spawn(self, ns: str, *argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def node(self, mtu: int = 1500) -> Node:
        """A node namespace on the underlay bridge (created with the first node)."""
        if self.fabric is None:
            self.fabric = self.ns("fab")
            sh("ip", "-n", self.fabric, "link", "add", "ul", "type", "bridge")
            sh("ip", "-n", self.fabric, "link", "set", "ul", "mtu", str(mtu), "up")
            self._switch_not_firewall(self.fabric)
        self._nodes += 1
        i = self._nodes
        ns = self.ns(f"n{i}")
        addr = ipaddress.IPv4Address(f"198.18.0.{i}")
        # Created inside the fabric namespace, so the names cannot clash with the host's.
        sh("ip", "-n", self.fabric, "link", "add", f"u{i}", "mtu", str(mtu), "type", "veth",
           "peer", "name", "eth0", "mtu", str(mtu), "netns", ns)
        sh("ip", "-n", self.fabric, "link", "set", f"u{i}", "master", "ul", "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        return Node(ns, addr)

    def _switch_not_firewall(self, ns: str) -> None:
        """The fabric stands for the network between machines, which runs no host's
        firewall. A new namespace inherits br_netfilter's ``bridge-nf-call-*=1`` when the
        host has the module loaded (Docker loads it), which would run every underlay frame
        through the iptables hooks a third time on the cross-node path -- a cost of the
        lab, not of the overlay. The node namespaces keep it: a real Docker host has it."""
        sysctls = [f"net.bridge.bridge-nf-call-{t}=0" for t in ("iptables", "ip6tables",
                                                                 "arptables")]
        if os.path.exists("/proc/sys/net/bridge"):
            self.exec(ns, "sysctl", "-qw", *sysctls)

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
        self.namespaces.clear()

    def leftovers(self) -> list[str]:
        out = sh("ip", "netns", "list").stdout
        return [line.split()[0] for line in out.splitlines()
                if line.startswith(self.prefix)]
