"""Which load balancer this node gets: kernel detection and construction.

The agent picks a backend once at start-up (:func:`detect_backend`) and builds it with
:func:`make_load_balancer`; the choice is reported as ``backend_name`` on its Node.
This lives apart from :mod:`shoal.net.lb` (the interface) because it must import both
backends, and the backends import the interface: with the factory in ``lb.py`` the two
depended on each other.
"""

from __future__ import annotations

import concurrent.futures
import os

from shoal.net import netns as netns_mod
from shoal.net.lb import BackendName, LoadBalancer
from shoal.net.lb_ipvs import IpvsLoadBalancer
from shoal.net.lb_nftables import NftablesLoadBalancer


def ipvs_available(netns: str | None = None) -> bool:
    """True when the kernel offers IPVS: /proc/net/ip_vs exists (module loaded or built
    in) or the generic-netlink family ``IPVS`` resolves (resolving it makes the kernel
    load the module on demand, as on a fresh node)."""
    if netns is None and os.path.exists("/proc/net/ip_vs"):
        return True
    # pyroute2's synchronous sockets run their own event loop and fail inside a running
    # one ("This event loop is already running") -- which the agent's start-up is. A
    # worker thread has no loop, so the probe behaves the same from sync and async code.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_probe_ipvs_family, netns).result()


def _probe_ipvs_family(netns: str | None) -> bool:
    try:
        from pyroute2 import IPVS
    except ImportError:  # pragma: no cover - pyroute2 is a dependency
        return False
    try:
        path = None if netns is None else netns_mod.path(netns)
        ipvs = IPVS(netns=path, flags=0) if path else IPVS()
    except Exception:  # pyroute2 raises NetlinkError/OSError when the family is unknown
        return False
    try:
        ipvs.service("dump")
        return True
    except Exception:
        return False
    finally:
        ipvs.close()


def detect_backend(netns: str | None = None) -> BackendName:
    """IPVS when the kernel has it, else nftables."""
    return "ipvs" if ipvs_available(netns) else "nftables"


def make_load_balancer(backend: BackendName | None = None, *, netns: str | None = None
                       ) -> LoadBalancer:
    """The balancer for this node; ``backend`` None means :func:`detect_backend`."""
    chosen = backend or detect_backend(netns)
    if chosen == "ipvs":
        return IpvsLoadBalancer(netns=netns)
    return NftablesLoadBalancer(netns=netns)
