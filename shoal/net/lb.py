"""The service load-balancer interface: what every balancer backend implements.

One interface, two kernels' worth of implementations: IPVS (``lb_ipvs``) where the kernel
has it, nftables DNAT (``lb_nftables``) where it does not -- this machine's kernel, like
many minimal ones, has no IPVS, and there Docker Swarm's VIPs silently time out. Which
one a node gets is :mod:`shoal.net.lb_factory`'s business, so this module imports no
backend and the backends import it without a cycle.

A :class:`VirtualService` is one (VIP, port, protocol) balanced over backends. A VIP of
``None`` is a published ingress port: it answers on every local address of the node (the
routing mesh). Traffic to a VIP is always masqueraded to the node's own address on the
backend's network, so replies return through the node whose conntrack translated them.
"""

from __future__ import annotations

import abc
import ipaddress
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

Protocol = Literal["tcp", "udp"]
_PORT_FIELD = struct.Struct("!H2x")
BackendName = Literal["nftables", "ipvs"]


@dataclass(frozen=True, order=True)
class Backend:
    ip: ipaddress.IPv4Address
    port: int
    # "ip:port" and the bare address, formatted once: a full sync of 100,000 backends
    # would otherwise spend most of its rendering time in ipaddress.__str__.
    text: str = field(init=False, compare=False, repr=False)
    ip_text: str = field(init=False, compare=False, repr=False)
    # Address and port as nftables concatenation fields (4 + 2 bytes, padded to 8): the
    # netlink full sync (nft_elements) writes these 100,000 times.
    wire: bytes = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ip_text", str(self.ip))
        object.__setattr__(self, "text", f"{self.ip_text}:{self.port}")
        object.__setattr__(self, "wire", self.ip.packed + _PORT_FIELD.pack(self.port))

    @classmethod
    def parse(cls, text: str) -> Backend:
        host, _, port = text.rpartition(":")
        return cls(ipaddress.IPv4Address(host), int(port))

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class VirtualService:
    vip: ipaddress.IPv4Address | None  # None: a published port on every local address
    port: int
    protocol: Protocol
    backends: tuple[Backend, ...]

    @classmethod
    def make(cls, vip: str | None, port: int, protocol: Protocol,
             backends: Iterable[str | Backend]) -> VirtualService:
        """Backends are sorted and de-duplicated, so equal sets compare equal."""
        parsed = {b if isinstance(b, Backend) else Backend.parse(b) for b in backends}
        return cls(None if vip is None else ipaddress.IPv4Address(vip), port, protocol,
                   tuple(sorted(parsed)))

    @property
    def key(self) -> ServiceKey:
        return (self.vip, self.port, self.protocol)

    def describe(self) -> str:
        where = "*" if self.vip is None else str(self.vip)
        return f"{where}:{self.port}/{self.protocol}"


ServiceKey = tuple[ipaddress.IPv4Address | None, int, Protocol]


class LoadBalancer(abc.ABC):
    """Level-triggered: ``sync`` makes the kernel hold exactly ``services``; the
    incremental calls change one service and touch nothing else."""

    @property
    @abc.abstractmethod
    def backend_name(self) -> BackendName: ...

    @abc.abstractmethod
    async def sync(self, services: Sequence[VirtualService]) -> None: ...

    @abc.abstractmethod
    async def update_service(self, service: VirtualService) -> None:
        """Create or replace one service (its backends become exactly these)."""

    @abc.abstractmethod
    async def remove_service(self, key: ServiceKey) -> None:
        """Remove one service; unknown keys are fine."""

    async def resync(self) -> None:
        """Rewrite everything from the balancer's own model, repairing drift that an
        incremental change would not notice (the agent calls it now and then, like
        kube-proxy's periodic full sync)."""
        await self.sync(list(self.services.values()))

    async def repair(self) -> list[str]:
        """Make the kernel hold exactly the model again, changing only what drifted
        (someone deleted a rule or an element by hand), and say what was repaired, one
        human-readable line each (empty: nothing had drifted). The agent calls it from
        its periodic pass and logs the lines. This default rewrites everything and
        cannot tell what drifted; the backends override it."""
        await self.resync()
        return []

    def adoption_report(self) -> list[str]:
        """What the first sync found different in the kernel state an earlier agent
        left, and changed, one line each as ``repair()`` says it (empty: nothing, or the
        balancer wrote its state whole). Handed out once: the caller logs it."""
        return []

    @property
    @abc.abstractmethod
    def services(self) -> dict[ServiceKey, VirtualService]:
        """What this balancer believes it programmed."""

    @abc.abstractmethod
    async def teardown(self) -> None:
        """Remove everything this balancer programmed."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (sockets, threads); the kernel state stays."""


_T = TypeVar("_T")


def some(items: Sequence[_T], shown: int = 3, describe: Callable[[_T], str] = str) -> str:
    """The first ``shown`` items for a repair report, "(+N more)" after them; only those
    are described (a mass drift has thousands)."""
    more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(describe(i) for i in items[:shown]) + more


def protocol_number(protocol: Protocol) -> int:
    return socket.IPPROTO_TCP if protocol == "tcp" else socket.IPPROTO_UDP
