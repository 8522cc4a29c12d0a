"""IPAM: pure allocation rules, restart safety (from_state), exhaustion and conflicts."""

from __future__ import annotations

import ipaddress
import re

import pytest

from shoal.controllers.allocator.ipam import (
    Allocator,
    ConflictError,
    ExhaustedError,
    IpamError,
    PoolConfig,
    PortRequest,
    UnknownNetworkError,
)
from shoal.net import naming

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network


def test_swarm_defaults() -> None:
    alloc = Allocator()
    ingress = alloc.allocate_network("ingress", ingress=True)
    assert ingress.subnet == N("10.255.0.0/20") and ingress.vip_range is None
    assert ingress.gateway == A("10.255.0.1") and ingress.vni == 4096
    a = alloc.allocate_network("a")
    b = alloc.allocate_network("b")
    assert (a.subnet, a.gateway, a.vni) == (N("10.0.0.0/24"), A("10.0.0.1"), 4097)
    assert (b.subnet, b.vni) == (N("10.0.1.0/24"), 4098)
    assert a.vip_range == N("10.254.0.0/24") and b.vip_range == N("10.254.1.0/24")
    # Idempotent: asking again returns the same allocation.
    assert alloc.allocate_network("a") == a
    with pytest.raises(ConflictError, match="there is already an ingress network"):
        alloc.allocate_network("ingress2", ingress=True)


def test_pool_skips_reserved_and_requested_ranges() -> None:
    alloc = Allocator(PoolConfig(pool="10.254.0.0/15", subnet_prefix=24))
    # The whole 10.254/16 is the VIP pool and 10.255.0.0/20 the ingress range: the first
    # free /24 is right after them.
    assert alloc.allocate_network("x").subnet == N("10.255.16.0/24")
    alloc = Allocator(PoolConfig(pool="10.254.0.0/16", subnet_prefix=24))
    with pytest.raises(ExhaustedError, match=re.escape("no free /24 left in pool 10.254.0.0/16")):
        alloc.allocate_network("x")
    alloc = Allocator()
    alloc.allocate_network("big", subnet="10.0.0.0/22")
    assert alloc.allocate_network("next").subnet == N("10.0.4.0/24")
    overlap = re.escape("overlaps 10.0.0.0/22 of network 'big'")
    with pytest.raises(ConflictError, match=overlap) as e:
        alloc.allocate_network("clash", subnet="10.0.2.128/25")
    assert e.value.holder == "big"
    with pytest.raises(ConflictError, match="VIP pool"):
        alloc.allocate_network("vipclash", subnet="10.254.9.0/24")
    with pytest.raises(IpamError, match=re.escape("gateway 10.9.0.1 is not a host")):
        alloc.allocate_network("gw", subnet="10.8.0.0/24", gateway="10.9.0.1")
    custom = alloc.allocate_network("gw", subnet="10.8.0.0/24", gateway="10.8.0.254")
    assert custom.gateway == A("10.8.0.254")
    with pytest.raises(ConflictError, match="cannot change"):
        alloc.allocate_network("gw", subnet="10.8.1.0/24")


def test_addresses_never_collide_and_skip_gateway() -> None:
    alloc = Allocator()
    alloc.allocate_network("n", subnet="10.1.0.0/29")  # hosts .1-.6, gateway .1
    node = alloc.allocate_node_address("n", "node-a")
    tasks = [alloc.allocate_task_address("n", f"t{i}") for i in range(4)]
    assert node == A("10.1.0.2")
    assert tasks == [A("10.1.0.3"), A("10.1.0.4"), A("10.1.0.5"), A("10.1.0.6")]
    assert alloc.allocate_task_address("n", "t0") == A("10.1.0.3")  # idempotent
    with pytest.raises(ExhaustedError, match=re.escape("subnet 10.1.0.0/29 has no free address")):
        alloc.allocate_task_address("n", "t9")
    alloc.release_task_address("n", "t1")
    assert alloc.allocate_task_address("n", "t9") == A("10.1.0.4")


def test_released_address_is_not_reused_at_once() -> None:
    alloc = Allocator()
    alloc.allocate_network("n")
    first = alloc.allocate_task_address("n", "t1")
    alloc.allocate_task_address("n", "t2")
    alloc.release_task_address("n", "t1")
    # The next address goes after the highest one in use, not back to t1's.
    assert alloc.allocate_task_address("n", "t3") != first


def test_vips_come_from_the_network_block() -> None:
    alloc = Allocator()
    net = alloc.allocate_network("n")
    vip = alloc.allocate_vip("n", "shop/web")
    assert net.vip_range is not None and vip in net.vip_range and vip not in net.subnet
    assert alloc.allocate_vip("n", "shop/web") == vip
    assert alloc.allocate_vip("n", "shop/db") == vip + 1
    alloc.allocate_network("ingress", ingress=True)
    with pytest.raises(IpamError, match="carries no service VIPs"):
        alloc.allocate_vip("ingress", "shop/web")
    with pytest.raises(UnknownNetworkError):
        alloc.allocate_vip("missing", "x")


def test_vip_pool_exhaustion_names_the_limit() -> None:
    alloc = Allocator(PoolConfig(vip_pool="10.254.0.0/23", vip_block_prefix=24))
    alloc.allocate_network("a")
    alloc.allocate_network("b")
    with pytest.raises(ExhaustedError, match=re.escape("VIP pool 10.254.0.0/23 is exhausted")):
        alloc.allocate_network("c")


def test_vni_exhaustion() -> None:
    alloc = Allocator(PoolConfig(vni_range=(5000, 5001)))
    assert [alloc.allocate_network(n).vni for n in "ab"] == [5000, 5001]
    with pytest.raises(ExhaustedError, match="no free VXLAN VNI in 5000-5001"):
        alloc.allocate_network("c")
    alloc.release_network("a")
    assert alloc.allocate_network("c").vni == 5000


def test_ports_requested_dynamic_and_conflicts() -> None:
    alloc = Allocator()
    web = alloc.allocate_ports("shop/web", [PortRequest(80, "tcp", 8080),
                                            PortRequest(443, "tcp")])
    assert [(p.published, p.target) for p in web] == [(8080, 80), (30000, 443)]
    with pytest.raises(ConflictError, match="8080/tcp is already used by service "
                                            "'shop/web'") as e:
        alloc.allocate_ports("shop/api", [PortRequest(80, "tcp", 8080)])
    assert e.value.holder == "shop/web"
    # Same number, other protocol: fine.
    assert alloc.allocate_ports("dns", [PortRequest(53, "udp", 8080)])[0].published == 8080
    # A requested port inside the dynamic range conflicts like any other.
    with pytest.raises(ConflictError, match="30000/tcp"):
        alloc.allocate_ports("x", [PortRequest(1, "tcp", 30000)])
    # Re-applying keeps the picked port; dropping a request frees it.
    again = alloc.allocate_ports("shop/web", [PortRequest(80, "tcp", 8080),
                                              PortRequest(443, "tcp")])
    assert again == web
    alloc.allocate_ports("shop/web", [PortRequest(80, "tcp", 8080)])
    assert alloc.port_holder("tcp", 30000) is None
    with pytest.raises(ConflictError, match="twice"):
        alloc.allocate_ports("y", [PortRequest(1, "tcp", 9000), PortRequest(2, "tcp", 9000)])
    assert alloc.port_holder("tcp", 9000) is None  # all or nothing


def test_port_range_exhaustion() -> None:
    alloc = Allocator(PoolConfig(port_range=(30000, 30001)))
    alloc.allocate_ports("a", [PortRequest(1), PortRequest(2)])
    with pytest.raises(ExhaustedError, match="no free tcp port left in 30000-30001"):
        alloc.allocate_ports("b", [PortRequest(1)])


def test_from_state_rebuilds_the_same_decisions() -> None:
    alloc = Allocator()
    alloc.allocate_network("ingress", ingress=True)
    for n in ("a", "b"):
        alloc.allocate_network(n)
        alloc.allocate_node_address(n, "node1")
        for i in range(3):
            alloc.allocate_task_address(n, f"{n}{i}")
        alloc.allocate_vip(n, f"svc-{n}")
    alloc.allocate_ports("shop/web", [PortRequest(80)])
    restored = Allocator.from_state(alloc.networks(), alloc.addresses(), alloc.ports())
    # Whatever comes next is the same in both: allocation is a function of the state.
    for x in (alloc, restored):
        x.allocate_network("c")
        x.allocate_task_address("a", "new")
        x.allocate_vip("b", "svc-new")
        x.allocate_ports("shop/api", [PortRequest(81)])
    assert restored.networks() == alloc.networks()
    assert sorted(restored.addresses(), key=repr) == sorted(alloc.addresses(), key=repr)
    assert restored.ports() == alloc.ports()


def test_from_state_refuses_double_claims() -> None:
    alloc = Allocator()
    net = alloc.allocate_network("a")
    alloc.allocate_task_address("a", "t1")
    addrs = alloc.addresses()
    dup = [*addrs, type(addrs[0])("a", "task", "t2", addrs[0].address)]
    with pytest.raises(ConflictError, match="is held by task 't1'"):
        Allocator.from_state([net], dup)
    twin = type(net)("b", ipaddress.IPv4Network("10.0.0.0/25"), A("10.0.0.1"), 4200)
    with pytest.raises(ConflictError, match="overlaps"):
        Allocator.from_state([net, twin])


def test_mac_derivation_roundtrip() -> None:
    mac = naming.mac_for("10.0.9.3")
    assert mac == "02:5c:0a:00:09:03"
    assert naming.address_for_mac(mac) == A("10.0.9.3")
    assert naming.address_for_mac("02:42:0a:00:09:03") is None
    assert len(naming.veth_name("x" * 64, "net")) == 15
    assert naming.is_ours(naming.veth_name("t", "n")) and naming.is_ours("shb-4096")
    assert not naming.is_ours("eth0") and naming.vni_of("shv-4097") == 4097
