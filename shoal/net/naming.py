"""Deterministic names and MAC addresses for everything Shoal puts in the kernel.

Every node must be able to compute, from etcd alone, the link names it owns (to find and
remove stale ones after a restart) and the MAC address of every remote endpoint (to program
FDB and neighbour entries without asking the remote node). So both are pure functions of
allocated values: a MAC of an overlay address, a link name of a VNI or a task key.
"""

from __future__ import annotations

import hashlib
import ipaddress

# Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
IFNAME_MAX = 15
BRIDGE_PREFIX = "shb-"
VXLAN_PREFIX = "shv-"
VETH_PREFIX = "sht"
# Locally administered (bit 1 of the first octet), unicast (bit 0 clear); distinct from
# Docker's 02:42 so Shoal's endpoints are recognisable next to dockerd's bridges.
MAC_PREFIX = (0x02, 0x5C)


def mac_for(address: ipaddress.IPv4Address | str) -> str:
    """The MAC of an overlay endpoint: 02:5c followed by its four IPv4 octets. Overlay
    subnets never overlap, so the MAC is unique cluster-wide wherever the address is."""
    octets = ipaddress.IPv4Address(address).packed
    return ":".join(f"{b:02x}" for b in (*MAC_PREFIX, *octets))


def address_for_mac(mac: str) -> ipaddress.IPv4Address | None:
    """Inverse of :func:`mac_for`; None for a MAC Shoal did not derive."""
    try:
        raw = bytes(int(part, 16) for part in mac.split(":"))
    except ValueError:
        return None
    if len(raw) != 6 or tuple(raw[:2]) != MAC_PREFIX:
        return None
    return ipaddress.IPv4Address(raw[2:])


def bridge_name(vni: int) -> str:
    return f"{BRIDGE_PREFIX}{vni}"


def vxlan_name(vni: int) -> str:
    return f"{VXLAN_PREFIX}{vni}"


def vni_of(ifname: str) -> int | None:
    """The VNI in a Shoal bridge or VXLAN name, else None (not ours)."""
    for prefix in (BRIDGE_PREFIX, VXLAN_PREFIX):
        if ifname.startswith(prefix) and ifname[len(prefix):].isdigit():
            return int(ifname[len(prefix):])
    return None


def veth_name(task_key: str, network: str) -> str:
    """Host end of a task's veth on one network: a hash, because task ids are long and
    the name must fit 15 bytes and stay the same across agent restarts."""
    digest = hashlib.sha1(f"{task_key}\0{network}".encode()).hexdigest()
    return VETH_PREFIX + digest[: IFNAME_MAX - len(VETH_PREFIX)]


def is_ours(ifname: str) -> bool:
    return vni_of(ifname) is not None or (
        ifname.startswith(VETH_PREFIX) and len(ifname) == IFNAME_MAX)
