"""shoal.net.nft_elements: the netlink elements of a table are, one for one, the elements
the nft text path writes for the same services (read back through nftnl's layouts)."""

from __future__ import annotations

import re

from shoal.net import nft_elements, nftnl
from shoal.net.lb import VirtualService
from shoal.net.lb_nftables import render_full


def services() -> list[VirtualService]:
    return [
        VirtualService.make("10.254.0.5", 80, "tcp", ["10.0.9.11:8080", "10.0.9.10:8080"]),
        VirtualService.make("10.254.0.5", 53, "udp", ["10.0.9.20:53"]),
        VirtualService.make("10.254.0.6", 80, "tcp", []),
        VirtualService.make("10.254.0.7", 0, "tcp", ["10.0.9.30:0", "10.0.9.31:0"]),
        VirtualService.make("10.254.0.8", 0, "udp", ["10.0.9.32:0"]),
        VirtualService.make(None, 30080, "tcp", [f"10.255.0.{i}:80" for i in range(5, 8)]),
        VirtualService.make(None, 30053, "udp", ["10.255.0.9:53"]),
        VirtualService.make("10.254.1.1", 65535, "tcp",
                            [f"10.1.{i // 250}.{i % 250 + 1}:{1 + i}" for i in range(300)]),
    ]


def text_elements(script: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for line in script.splitlines():
        m = re.match(r"add element ip shoal (\S+) \{ (.*) \}$", line)
        if m:
            found.setdefault(m[1], set()).update(m[2].split(", "))
    return found


def test_elements_match_the_text_path_for_every_kind() -> None:
    encoded = nft_elements.encode(services())
    read_back = {name: {nftnl.describe_element(name, item) for item in items}
                 for name, items in encoded.sets.items()}
    assert read_back == text_elements(render_full(services()))
    assert encoded.count == sum(len(v) for v in read_back.values())


def test_split_reads_keys_and_data_as_a_kernel_dump_does() -> None:
    encoded = nft_elements.encode(services(), owners=True)
    for name, items in encoded.sets.items():
        split = nft_elements.split(name, items)
        # What nftnl parses out of a dumped element is what split() says.
        assert split == dict(nftnl.split_element(item[4:]) for item in items)
        assert set(split) == set(encoded.owners[name])
    web = services()[0]
    assert encoded.owners["svc"][web.vip.packed + b"\x06\0\0\0" + b"\0\x50\0\0"] == web.key


def test_a_big_set_is_split_into_messages_the_kernel_accepts() -> None:
    items = nft_elements.encode(services() * 1).sets["be_tcp"] * 20  # ~6,000 elements
    parts: list[bytes] = []
    pending: dict[int, object] = {}
    link = nftnl.NftNetlink.__new__(nftnl.NftNetlink)  # encoding only: no socket
    link.table, link.family, link.seq = "shoal", 2, 0
    link._table_attr = nftnl.nla(nftnl.NFTA_SET_ELEM_LIST_TABLE, b"shoal\0")
    link._encode(nftnl.SetOp("add", "be_tcp", items), parts, pending)  # type: ignore[arg-type]
    wire = b"".join(parts)
    sizes = [length for _, length, _, _, _ in nftnl._messages(wire)]
    assert len(sizes) == len(pending) > 1
    assert max(sizes) < 65_536 and sum(sizes) == len(wire)
    assert sum(len(s.offsets) for s in pending.values()) == len(items)  # type: ignore[attr-defined]
