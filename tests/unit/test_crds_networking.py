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
