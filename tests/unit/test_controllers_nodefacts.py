"""controllers.nodefacts: what constraint keys read from a node, and matching them."""

from __future__ import annotations

from shoal.controllers import nodefacts
from shoal.crds import constraints as cons
from tests.unit.scheduler_support import node


def test_constraint_keys_match_nodes() -> None:
    n = nodefacts.NodeFacts.of(node("Web-1", labels={"zone": "East", "shoal.io/rack": "r1"},
                                    role="manager", address="10.0.3.7", os="Linux",
                                    arch="aarch64", engine={"storage": "SSD"}, uid="AbC123"))

    def ok(expr: str) -> bool:
        return nodefacts.matches(cons.parse_constraint(expr), n)

    assert ok("node.id==abc123")  # case-insensitive values
    assert ok("node.hostname==web-1")
    assert ok("node.role==manager") and not ok("node.role==worker")
    assert ok("node.platform.os==linux")
    assert ok("node.platform.arch==arm64") and ok("node.platform.arch==aarch64")
    assert ok("node.labels.zone==east") and ok("node.labels.zone!=west")
    assert ok("node.labels.shoal.io/rack==R1")
    assert ok("engine.labels.storage==ssd")
    assert ok("node.ip==10.0.3.7") and ok("node.ip==10.0.0.0/16")
    assert not ok("node.ip==10.1.0.0/16") and ok("node.ip!=10.1.0.0/16")
    assert not ok("node.ip==fd00::/8")  # another address family never matches
    # A missing label: == never matches, != always does (Swarm).
    assert not ok("node.labels.gpu==true") and ok("node.labels.gpu!=true")
    assert not ok("engine.labels.gpu==true") and ok("engine.labels.gpu!=true")
    # Label names are matched exactly.
    assert not ok("node.labels.Zone==east")
    assert nodefacts.match_all(cons.parse_constraints(["node.role==manager",
                                                       "node.labels.zone==east"]), n)
    assert not nodefacts.match_all(cons.parse_constraints(["node.role==manager",
                                                           "node.labels.zone==west"]), n)


def test_node_without_address_fails_ip_equality() -> None:
    facts = nodefacts.NodeFacts.of(node("n", address=""))
    assert not nodefacts.matches(cons.parse_constraint("node.ip==10.0.0.0/8"), facts)
    assert nodefacts.matches(cons.parse_constraint("node.ip!=10.0.0.0/8"), facts)
