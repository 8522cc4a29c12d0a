"""``swctl up --nodes``' underlay bridge on a host whose firewall Docker manages.

The bridge lives in the host's namespace; with br_netfilter (``bridge-nf-call-iptables=1``)
every frame between two nodes runs through the host's iptables FORWARD chain, whose
policy Docker sets to DROP -- so the nodes' VXLAN, and with it the overlay and the
routing mesh across nodes, timed out. Here the "host" is a lab namespace made to look like
a default Docker install (``test_host_firewall.make_docker_host``), with the bridge and two
node namespaces on it exactly as ``netnodes`` builds them: nodes cannot reach each other
before ``open_firewall``, can after it, and ``close_firewall`` leaves the user's firewall
exactly as it was. The machine's own firewall is never touched.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.e2e.netcluster import NETTOOL, tcp
from tests.e2e.netlab import Lab, have_netns_privileges, sh
from tests.e2e.test_host_firewall import firewall, make_docker_host

pytestmark = pytest.mark.skipif(not have_netns_privileges(), reason="needs root and iproute2")

BRIDGE = "shoal-ultest"
REPO = str(Path(__file__).resolve().parents[2])


def netnodes_call(lab: Lab, host: str, fn: str) -> str:
    """``netnodes.<fn>(underlay)`` run inside the lab's host namespace, as ``swctl up``
    and ``swctl down`` run it in the machine's."""
    code = ("import sys; from shoal.cli import netnodes; "
            f"u = netnodes.plan(2, '10.77.0.0/24', {BRIDGE!r}, 'fwtest'); "
            f"print(netnodes.{fn}(u))")
    return lab.exec(host, "env", f"PYTHONPATH={REPO}", sys.executable, "-c", code,
                    timeout=60).stdout.strip()


def test_nodes_reach_each_other_through_a_docker_managed_host_firewall(lab: Lab) -> None:
    host = lab.ns("host")
    make_docker_host(host)
    before = firewall(host)
    sh("ip", "-n", host, "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "-n", host, "link", "set", BRIDGE, "up")
    nodes = [lab.ns(f"node{i}") for i in (1, 2)]
    for i, ns in enumerate(nodes, 1):
        sh("ip", "-n", host, "link", "add", f"fwv{i}", "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        sh("ip", "-n", host, "link", "set", f"fwv{i}", "master", BRIDGE, "up")
        sh("ip", "-n", ns, "addr", "add", f"10.77.0.{10 + i}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
    lab.spawn(nodes[1], sys.executable, NETTOOL, "serve", "node2", "7000")

    # Docker's FORWARD DROP sees the bridged frames: nothing gets across.
    assert tcp(lab, nodes[0], "10.77.0.12", retry=2) == ["ERR", "TimeoutError"]

    assert netnodes_call(lab, host, "open_firewall") == "[]"  # no problems
    assert tcp(lab, nodes[0], "10.77.0.12") == ["node2"]
    saved = sh("ip", "netns", "exec", host, "iptables-nft-save", "-t", "filter").stdout
    assert (f"-A DOCKER-USER -i {BRIDGE} -o {BRIDGE} -m comment --comment shoal -j ACCEPT"
            in saved)

    assert netnodes_call(lab, host, "close_firewall") != "0"
    assert firewall(host) == before
    assert tcp(lab, nodes[0], "10.77.0.12", retry=2) == ["ERR", "TimeoutError"]
