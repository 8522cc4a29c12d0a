"""shoal/cli/node.py: docker's node filters and the local-node mark, without etcd."""

from __future__ import annotations

import pytest

from shoal.cli import errors, node
from shoal.crds import resource


def _node(name: str, **status: str) -> resource.Resource:
    obj = resource.new("Node", name, None, {"role": "manager"}, labels={"zone": "a"})
    obj.metadata.uid = "0123abcd-0000-0000-0000-000000000000"
    obj.status = {"engineLabels": {"ssd": "yes"}, **status}
    return obj


def test_filters() -> None:
    n = _node("web-1")
    assert node.filter_matches(n, "name", "web")
    assert node.filter_matches(n, "id", "0123ab")
    assert not node.filter_matches(n, "id", "ffff")
    assert node.filter_matches(n, "role", "manager")
    assert node.filter_matches(n, "node.label", "zone=a")
    assert not node.filter_matches(n, "node.label", "zone=b")
    assert node.filter_matches(n, "label", "ssd")
    assert not node.filter_matches(n, "membership", "pending")
    with pytest.raises(errors.CliError, match='invalid filter "colour=blue"'):
        node.parse_filters(["colour=blue"])
    with pytest.raises(errors.CliError, match="role is manager or worker"):
        node.parse_filters(["role=boss"])


def test_local_needs_this_hostname_and_one_of_its_addresses() -> None:
    n = _node("n1", hostname="h", address="10.1.1.1")
    assert node.is_local(n, "h", {"10.1.1.1"})
    assert not node.is_local(n, "h", {"127.0.0.1"})  # a netns node of this machine
    assert not node.is_local(n, "other", {"10.1.1.1"})
