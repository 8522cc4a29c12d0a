"""The balancer's model as ``ip shoal`` set elements in netlink wire form.

The same elements :func:`shoal.net.lb_nftables.render_full` writes as text (dispatch maps
``svc``/``svca``/``np``, backend maps ``be_``/``va_``/``np_<proto>``, the ``vips`` set),
encoded for :mod:`shoal.net.nftnl`. Pure and kernel-free, so a unit test checks each
element against its text form. This is the hot path of a full sync (~110,000 elements at
10,000 x 10): each backend element is five ``bytes`` concatenations of precomputed
pieces, and every per-service piece is made once per service, not once per backend.

``owners`` says which service each element belongs to, so drift repair can say "restored
10 backends of 10.254.0.1:80/tcp" rather than print bytes; it is built only when asked.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from shoal.net import nftnl
from shoal.net.lb import ServiceKey, VirtualService

_SVC, _SVCA, _NP, _VIPS = (nftnl.LAYOUTS[n] for n in ("svc", "svca", "np", "vips"))
_BE, _VA, _NPB = (nftnl.LAYOUTS[n] for n in ("be", "va", "np_"))


def chain_of(svc: VirtualService) -> str:
    """The shared chain balancing ``svc`` (as lb_nftables.lb_chain; repeated here so
    this module stays below lb_nftables)."""
    kind = "np" if svc.vip is None else ("va" if svc.port == 0 else "lb")
    return f"{kind}_{svc.protocol}_{len(svc.backends)}"


@dataclass
class Elements:
    """Encoded elements by set name, in the order the text path writes them."""

    sets: dict[str, list[bytes]] = field(default_factory=dict)
    # set name -> element key -> service key (with ``owners``; VIPs map to themselves)
    owners: dict[str, dict[bytes, ServiceKey | ipaddress.IPv4Address]] = field(
        default_factory=dict)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.sets.values())


def dispatch_element(svc: VirtualService) -> tuple[str, bytes, bytes]:
    """(set, key, element) sending ``svc``'s packets to its lb chain."""
    proto = nftnl.PROTO_BYTES[svc.protocol]
    data = nftnl.verdict_data(chain_of(svc))
    if svc.vip is None:
        key = proto + nftnl.port_bytes(svc.port)
        return "np", key, nftnl.element(_NP, key, data)
    if svc.port == 0:
        key = svc.vip.packed + proto
        return "svca", key, nftnl.element(_SVCA, key, data)
    key = svc.vip.packed + proto + nftnl.port_bytes(svc.port)
    return "svc", key, nftnl.element(_SVC, key, data)


def _index_mids(layout: nftnl.Layout) -> list[bytes]:
    """Slot index + data headers, for the first 256 slots: the part of a backend
    element between the service's head and the backend's address."""
    return [nftnl.index_bytes(i) + layout.mid for i in range(256)]


_MIDS = {"np": _index_mids(_NPB), "va": _index_mids(_VA), "be": _index_mids(_BE)}


def backend_elements(svc: VirtualService) -> tuple[str, list[bytes]]:
    """(map, elements) of ``svc``'s backend slots, numbered from 0 in backend order.
    Each element is the service's head + the slot's precomputed index and data headers
    + the backend's precomputed address and port: two concatenations."""
    backends = svc.backends
    if svc.vip is None:
        kind, head = "np", _NPB.head + nftnl.port_bytes(svc.port)
    elif svc.port == 0:  # the address only: the destination port is kept
        head = _VA.head + svc.vip.packed
        if len(backends) > 256:
            mid = _VA.mid
            return f"va_{svc.protocol}", [head + nftnl.index_bytes(i) + mid + b.wire[:4]
                                          for i, b in enumerate(backends)]
        mids = _MIDS["va"]
        return f"va_{svc.protocol}", [head + mids[i] + b.wire[:4]
                                      for i, b in enumerate(backends)]
    else:
        kind, head = "be", _BE.head + svc.vip.packed + nftnl.port_bytes(svc.port)
    if len(backends) > 256:
        mid = _NPB.mid if kind == "np" else _BE.mid
        return f"{kind}_{svc.protocol}", [head + nftnl.index_bytes(i) + mid + b.wire
                                          for i, b in enumerate(backends)]
    mids = _MIDS[kind]
    return f"{kind}_{svc.protocol}", [head + mids[i] + b.wire for i, b in enumerate(backends)]


def backend_keys(svc: VirtualService) -> list[bytes]:
    """The keys of ``svc``'s backend slots (what :func:`backend_elements` keys by)."""
    if svc.vip is None:
        head = nftnl.port_bytes(svc.port)
    elif svc.port == 0:
        head = svc.vip.packed
    else:
        head = svc.vip.packed + nftnl.port_bytes(svc.port)
    return [head + nftnl.index_bytes(i) for i in range(len(svc.backends))]


def vip_element(vip: ipaddress.IPv4Address) -> bytes:
    return nftnl.element(_VIPS, vip.packed)


def encode(services: Iterable[VirtualService], *, owners: bool = False) -> Elements:
    """Every element of the table for ``services`` (sets with no element are absent)."""
    out = Elements()
    sets = out.sets
    vips: set[ipaddress.IPv4Address] = set()
    for svc in services:
        if svc.vip is not None:
            vips.add(svc.vip)
        if not svc.backends:
            continue
        name, key, item = dispatch_element(svc)
        sets.setdefault(name, []).append(item)
        bmap, items = backend_elements(svc)
        found = sets.get(bmap)
        if found is None:
            sets[bmap] = items
        else:
            found.extend(items)
        if owners:
            out.owners.setdefault(name, {})[key] = svc.key
            slots = out.owners.setdefault(bmap, {})
            for k in backend_keys(svc):
                slots[k] = svc.key
    if vips:
        ordered = sorted(vips)
        sets["vips"] = [vip_element(v) for v in ordered]
        if owners:
            out.owners["vips"] = {v.packed: v for v in ordered}
    return out


def _offsets(set_name: str) -> tuple[int, int, int]:
    """(key offset, key length, data offset) in an element :func:`encode` makes."""
    layout = nftnl.layout_of(set_name)
    klen = 4 * len(layout.key)
    if layout.data is None:
        off = len(layout.head)
        return off, klen, off + klen
    if not layout.data:  # verdict maps: the list-element header is added around head
        off = 4 + len(layout.head)
        return off, klen, off + klen
    off = len(layout.head)
    return off, klen, off + klen + len(layout.mid)


def element_key(set_name: str, item: bytes) -> bytes:
    """The key bytes of an encoded element."""
    off, klen, _ = _offsets(set_name)
    return item[off:off + klen]


def split(set_name: str, items: Iterable[bytes]) -> dict[bytes, bytes | None]:
    """Encoded elements as key -> data, in the form :func:`nftnl.split_element` reads
    from a kernel dump (so the two compare as bytes)."""
    off, klen, doff = _offsets(set_name)
    if nftnl.layout_of(set_name).data is None:
        return {item[off:off + klen]: None for item in items}
    return {item[off:off + klen]: item[doff:] for item in items}


def key_only(key: bytes) -> bytes:
    """An element holding only its key: what a deletion needs."""
    body = nftnl.nest(nftnl.NFTA_SET_ELEM_KEY, nftnl.nla(nftnl.NFTA_DATA_VALUE, key))
    return nftnl.nest(nftnl.NFTA_LIST_ELEM, body)
