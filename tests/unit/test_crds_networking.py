"""Which network is the routing mesh: one rule, shared by the allocator and the agents."""

from __future__ import annotations

import itertools

from shoal.crds import networking, resource


def net(name: str, created: str, rv: str, ingress: bool = True) -> resource.Resource:
    obj = resource.new("Network", name, spec={"driver": "overlay", "ingress": ingress})
    obj.metadata.creationTimestamp = created
    obj.metadata.resourceVersion = rv
    return obj


def test_oldest_ingress_network_wins_and_a_same_second_tie_goes_by_name() -> None:
    nets = [net("mesh-b", "2026-11-28T10:00:00Z", "5"),
            net("mesh-a", "2026-11-28T10:00:00Z", "90"),  # rewritten since: higher rv
            net("later", "2026-11-28T10:00:01Z", "1"),
            net("plain", "2026-11-28T09:00:00Z", "2", ingress=False)]
    for order in itertools.permutations(nets):
        assert networking.ingress_name(order) == "mesh-a"


def test_no_ingress_network() -> None:
    assert networking.ingress_name([net("plain", "2026-11-28T09:00:00Z", "2", False)]) is None


# --- the subnet rule (allocator and swctl apply) ---

def subnet(text: str) -> networking.IPv4Network:
    return networking.IPv4Network(text)


POOL = subnet(networking.SERVICE_VIP_POOL)


def test_overlapping_subnet_names_both_networks_and_subnets() -> None:
    clash = networking.subnet_overlap(subnet("10.0.9.128/25"), "b",
                                      [("appnet", subnet("10.0.9.0/24"))], POOL)
    assert clash == networking.SubnetOverlap(
        "appnet", "subnet 10.0.9.128/25 of network 'b' overlaps 10.0.9.0/24 of network "
                  "'appnet'")


def test_disjoint_subnets_and_the_network_itself_are_fine() -> None:
    taken = [("appnet", subnet("10.0.9.0/24")), ("b", subnet("10.0.10.0/24"))]
    assert networking.subnet_overlap(subnet("10.0.10.0/24"), "b", taken, POOL) is None
    assert networking.subnet_overlap(subnet("10.0.11.0/24"), "c", taken, POOL) is None


def test_the_vip_pool_is_nobody_s_subnet() -> None:
    clash = networking.subnet_overlap(subnet("10.254.3.0/24"), "c", [], POOL)
    assert clash is not None and clash.holder == networking.VIP_POOL_HOLDER
    assert clash.message.endswith("overlaps the service VIP pool 10.254.0.0/16")


def test_held_subnet_is_the_requested_one_else_the_allocated_one() -> None:
    asked = resource.new("Network", "a", spec={"subnet": "10.0.9.0/24"})
    asked.status = {"subnet": "10.0.1.0/24"}
    given = resource.new("Network", "b", spec={})
    given.status = {"subnet": "10.0.2.0/24"}
    pending = resource.new("Network", "c", spec={"subnet": "not a cidr"})
    assert networking.held_subnet(asked) == subnet("10.0.9.0/24")
    assert networking.held_subnet(given) == subnet("10.0.2.0/24")
    assert networking.requested_subnet(given) is None
    assert networking.held_subnet(pending) is None


# --- a service's networks and aliases ---

def test_service_networks_and_aliases_from_names_and_entries() -> None:
    svc = resource.new("Service", "web", "shop", spec={"networks": [
        "front", {"name": "back", "aliases": ["db", "store"]}, {"name": ""}, 7,
        {"name": "back", "aliases": ["db", "cache"]}, {"name": "edge", "aliases": "x"}]})
    assert networking.service_networks(svc) == ["front", "back", "edge"]
    assert networking.service_aliases(svc, "back") == ["db", "store", "cache"]
    assert networking.service_aliases(svc, "front") == []
    assert networking.service_aliases(svc, "edge") == []
    assert networking.service_aliases(svc, "elsewhere") == []
