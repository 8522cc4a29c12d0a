"""`swctl down` takes a local node's dataplane with it (``cli/leftovers.py``).

An agent that stops keeps its bridges, VXLANs, veths and balancer table for its successor
to adopt; a cluster taken down must not leave an overlay subnet routed on the host (one
did: a leftover ingress bridge captured the route to this host's resolver). Run inside a
namespace of the test's own, standing in for the host, so the machine's real network is
never touched: Shoal's links and table are made there as an agent leaves them, a user's
link and table beside them, and the removal must take exactly Shoal's.
"""

from __future__ import annotations

import sys

import pytest

from shoal.net import naming
from tests.e2e.netlab import Lab, have_netns_privileges, sh

pytestmark = pytest.mark.skipif(not have_netns_privileges(), reason="needs root and iproute2")


def test_down_removes_exactly_the_local_nodes_links_and_table(lab: Lab) -> None:
    host = lab.ns("host")
    bridge, vxlan = naming.bridge_name(4096), naming.vxlan_name(4096)
    sh("ip", "-n", host, "link", "add", bridge, "type", "bridge")
    sh("ip", "-n", host, "addr", "add", "10.255.0.2/20", "dev", bridge)
    sh("ip", "-n", host, "link", "set", bridge, "up")
    sh("ip", "-n", host, "link", "add", vxlan, "type", "vxlan", "id", "4096", "dstport",
       "4789", "nolearning")
    sh("ip", "-n", host, "link", "add", "user0", "type", "bridge")  # the user's own
    lab.exec(host, "nft", "add", "table", "ip", "shoal")
    lab.exec(host, "nft", "add", "table", "ip", "userfw")
    assert "10.255.0.0/20 dev " + bridge in sh("ip", "-n", host, "route").stdout

    out = lab.exec(host, sys.executable, "-c",
                   "from shoal.cli import leftovers; print(leftovers.remove_host_dataplane())")

    assert int(out.stdout.strip()) == 2
    links = sh("ip", "-n", host, "-br", "link").stdout
    assert bridge not in links and vxlan not in links and "user0" in links
    assert "10.255.0.0/20" not in sh("ip", "-n", host, "route").stdout
    tables = lab.exec(host, "nft", "list", "tables").stdout
    assert "table ip userfw" in tables and "table ip shoal" not in tables
    # Idempotent: a second `down` finds nothing and says so.
    again = lab.exec(host, sys.executable, "-c",
                     "from shoal.cli import leftovers; print(leftovers.remove_host_dataplane())")
    assert again.stdout.strip() == "0"
