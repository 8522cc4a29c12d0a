"""The segmentation and checksum offloads of the links the overlay creates, asserted.

Owns one thing: that the node-side links Shoal makes (bridge ``shb-*``, VXLAN ``shv-*``,
host ends of task veths ``sht*``) carry the offload features the overlay's throughput
rests on, read back and set only where they differ.

Why it exists: a TCP stream crosses the overlay as ~64 KB GSO superpackets end to end --
the task's stack hands the veth one superpacket, the VXLAN device encapsulates it whole
(``tx-udp_tnl-segmentation`` on the underlay) and the receiving node's GRO rebuilds one.
Every per-packet cost (bridge, encapsulation, the extra hops) is paid once per ~40 wire
packets. Turn one feature off on one device -- ``ethtool -K shv-4096 tx off``, a
workaround copied from some blog -- and that device segments every superpacket into
1450-byte packets in software: cross-node throughput fell to a third in our lab
(docs/networking.md, "Overlay throughput"). The kernel's defaults are right; this module
puts them back when something changed them, like the rest of the overlay repairs drift.

Why this shape:

* The ethtool ioctl (pyroute2's ``IoctlEthtool``), not ethtool netlink and not the
  ``ethtool`` binary: the ioctl exists on every kernel Shoal supports, needs no extra
  package on the host, and an ``AF_INET`` socket made in the node's namespace addresses
  its links by name. The socket is made on a thread that entered the namespace
  (``netns.run_in``), as every other netns socket of the dataplane is.
* One thread per call for all the links of a pass, not one per link: entering a
  namespace costs a thread.
* Only features the device lets us change (``available``) and that are not active are
  set, so a pass over a healthy node writes nothing and an agent restart flaps nothing
  (a feature change does not take a link down anyway, but it is logged by the kernel as
  a feature change to every listener).
* Not the task's end of the veth: that lives in the user's container, where someone with
  ``NET_ADMIN`` may have set it on purpose; it is created with the kernel's defaults.
  Not the host's underlay NIC either: that is the operator's (docs/networking.md says
  what to set there).
* GRO only on the VXLAN device (its ``gro_cells`` rebuild superpackets from decapsulated
  packets a NIC delivered one by one). On a veth, GRO switches the device to NAPI mode;
  packets from a bridge are already aggregated, and measured it cost 2-3 % more CPU per
  byte, so the veths keep the kernel's default (off).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyroute2.ethtool.ioctl import EthtoolError, IoctlEthtool

from shoal.net import netns as netns_mod

#: What keeps superpackets whole through a device: checksum offload (TSO needs it),
#: scatter-gather, TCP segmentation offload, generic segmentation.
SEGMENTATION = ("tx-checksum-ip-generic", "tx-scatter-gather", "tx-tcp-segmentation",
                "tx-generic-segmentation")

#: Wanted features by link kind (IFLA_INFO_KIND).
WANTED: dict[str, tuple[str, ...]] = {
    "bridge": SEGMENTATION,
    "vxlan": (*SEGMENTATION, "rx-gro"),
    "veth": SEGMENTATION,
}


@dataclass
class OffloadResult:
    #: Features switched on, as "link: feature, feature".
    changes: list[str] = field(default_factory=list)
    #: Links whose features could not be read or set, and why (never raised: a link
    #: missing a feature still carries traffic, only slower).
    problems: list[str] = field(default_factory=list)


def wanted_for(kind: str | None) -> tuple[str, ...]:
    return WANTED.get(kind or "", ())


def read_features(eth: Any, ifname: str) -> dict[str, tuple[bool, bool]]:
    """``feature -> (active, changeable)`` of ``ifname``, read with ``eth`` (an
    ``IoctlEthtool`` made in the link's namespace)."""
    eth.change_ifname(ifname)
    features = eth.get_features()
    return {name: (bool(active), bool(available))
            for name, active, available, _block, _bit in features}


def _ensure_one(eth: Any, ifname: str, wanted: Sequence[str], result: OffloadResult) -> None:
    eth.change_ifname(ifname)
    features = eth.get_features()
    missing = [f for f in wanted if f in features and features.is_available(f)
               and not features.is_active(f)]
    if not missing:
        return
    for name in missing:
        features.set_value(name, True)
    try:
        eth.set_features(features)
    except EthtoolError:
        pass  # some bits did not stick (a lower device lacks them): the re-read says which
    eth.change_ifname(ifname)
    after = eth.get_features()
    done = [f for f in missing if after.is_active(f)]
    if done:
        result.changes.append(f"set offloads on {ifname}: {', '.join(done)}")
    stuck = [f for f in missing if not after.is_active(f)]
    if stuck:
        result.problems.append(f"{ifname}: could not enable {', '.join(stuck)}")


def ensure_sync(links: Iterable[tuple[str, str | None]]) -> OffloadResult:
    """Give each ``(ifname, kind)`` link of the current namespace its wanted features."""
    result = OffloadResult()
    eth = IoctlEthtool()
    try:
        for ifname, kind in links:
            wanted = wanted_for(kind)
            if not wanted:
                continue
            try:
                _ensure_one(eth, ifname, wanted, result)
            except (EthtoolError, OSError) as exc:
                result.problems.append(f"{ifname}: reading or setting offloads failed: "
                                       f"{exc!r}")
    finally:
        eth.close()
    return result


async def ensure(netns: str | None, links: Sequence[tuple[str, str | None]]) -> OffloadResult:
    """``ensure_sync`` in the namespace ``netns`` (a name or path; None: right here), on
    one worker thread for all ``links``."""
    if not links:
        return OffloadResult()
    where = None if netns is None else netns_mod.path(netns)
    return await asyncio.to_thread(netns_mod.run_in, where, lambda: ensure_sync(links))


__all__ = [
    "WANTED",
    "OffloadResult",
    "ensure",
    "ensure_sync",
    "read_features",
    "wanted_for",
]
