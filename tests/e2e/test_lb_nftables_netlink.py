"""The nftables balancer's netlink full sync and drift repair, on a real kernel: the table
it writes is the one the nft text path writes, a re-sync keeps connections alive, repair()
puts back exactly what was deleted by hand (and writes nothing when nothing drifted), and
a kernel refusal names the element and changes neither the table nor the model."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from bench import dataplane as dataplane_bench
from shoal.net.lb import VirtualService
from shoal.net.lb_nftables import NftablesLoadBalancer
from shoal.net.nft import NftError, NftRunner
from shoal.net.overlay import OverlayNode
from tests.e2e.netcluster import NETTOOL, Cluster
from tests.e2e.netlab import Lab, have_netns_privileges, sh
from tests.helpers import eventually_sync

T = TypeVar("T")
pytestmark = pytest.mark.skipif(not have_netns_privileges(), reason="needs root and nft")


def every_kind(n: int = 120) -> list[VirtualService]:
    """VIP ports, whole VIPs (port 0), published ports, services without backends, both
    protocols and varied backend counts."""
    out = []
    for i in range(n):
        vip = f"10.254.{i // 200}.{i % 200 + 1}"
        backends = [f"10.{1 + i % 3}.{i % 250}.{j + 1}:{8000 + j}" for j in range(i % 5)]
        proto = "udp" if i % 7 == 0 else "tcp"
        if i % 4 == 0:
            out.append(VirtualService.make(vip, 0, proto, [b.split(":")[0] + ":0"
                                                           for b in backends]))
        elif i % 4 == 1:
            out.append(VirtualService.make(None, 30000 + i, proto, backends))
        else:
            out.append(VirtualService.make(vip, 80 + i % 3, proto, backends))
    return out


def table_json(ns: str) -> list[dict[str, Any]]:
    """``nft -j list table ip shoal`` with handles dropped and set elements sorted, so two
    tables compare element for element."""
    out = sh("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip", "shoal").stdout
    items = []
    for entry in json.loads(out)["nftables"]:
        if "metainfo" in entry:
            continue
        for body in entry.values():
            body.pop("handle", None)
            if "elem" in body:
                body["elem"] = sorted(body["elem"], key=lambda e: json.dumps(e, sort_keys=True))
        items.append(entry)
    return sorted(items, key=lambda e: json.dumps(e, sort_keys=True))


async def test_netlink_sync_writes_the_text_paths_table(lab: Lab) -> None:
    text_ns, nl_ns = lab.ns("text"), lab.ns("nl")
    services = every_kind()
    text = NftablesLoadBalancer(netns=text_ns, full_sync="text")
    netlink = NftablesLoadBalancer(netns=nl_ns)
    try:
        await text.sync(services)
        await netlink.sync(services)
        assert netlink.last_full_sync == "netlink"
        want = table_json(text_ns)
        assert sum(len(e.get("map", e.get("set", {})).get("elem", [])) for e in want) > 300
        assert table_json(nl_ns) == want
        # A re-sync over the identical table leaves it identical.
        await netlink.resync()
        assert netlink.last_full_sync == "netlink"
        assert table_json(nl_ns) == want
        # Incremental changes (netlink batches here, nft text there) agree too: fewer
        # backends, a new chain count, a removal (the last service of its VIP), a whole
        # VIP and a published port changed.
        seven = VirtualService.make("10.254.99.1", 80, "tcp",
                                    [f"10.9.9.{j + 1}:80" for j in range(7)])
        shrunk = VirtualService(services[2].vip, services[2].port, services[2].protocol,
                                services[2].backends[:1])
        whole = VirtualService.make(str(services[4].vip), 0, services[4].protocol,
                                    ["10.9.8.1:0", "10.9.8.2:0"])
        mesh = VirtualService.make(None, services[5].port, services[5].protocol, [])
        for lb in (text, netlink):
            for svc in (seven, shrunk, whole, mesh):
                await lb.update_service(svc)
            await lb.remove_service(services[3].key)
        assert table_json(nl_ns) == table_json(text_ns)
    finally:
        await text.close()
        await netlink.close()

    # A restarted agent (a new balancer) syncing other services over that table: it
    # adopts the table, and the result is what the text path writes for them -- stale
    # chains and elements gone.
    fewer = [VirtualService(s.vip, s.port, s.protocol, s.backends[:1])
             for s in services[::2]]
    text = NftablesLoadBalancer(netns=text_ns, full_sync="text")
    netlink = NftablesLoadBalancer(netns=nl_ns)
    try:
        await text.sync(fewer)
        await netlink.sync(fewer)
        assert netlink.last_full_sync == "adopted"
        assert table_json(nl_ns) == table_json(text_ns)
    finally:
        await text.close()
        await netlink.close()


def hold(ns: str, host: str, port: int) -> subprocess.Popen[str]:
    """One TCP connection kept open (nettool hold), once connected."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, NETTOOL, "hold", host,
                             str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "connected"
    return proc


async def test_a_table_of_another_layout_is_replaced_whole(lab: Lab) -> None:
    """An older Shoal's table whose map has another type cannot be prepared in place:
    the sync falls back to one text transaction replacing the table (atomic as well)."""
    text_ns, nl_ns = lab.ns("text"), lab.ns("nl")
    sh("ip", "netns", "exec", nl_ns, "nft", "add table ip shoal; "
       "add map ip shoal be_tcp { type ipv4_addr : ipv4_addr; }")
    services = every_kind(30)
    text = NftablesLoadBalancer(netns=text_ns, full_sync="text")
    netlink = NftablesLoadBalancer(netns=nl_ns)
    try:
        await text.sync(services)
        await netlink.sync(services)
        assert (netlink.last_full_sync or "").startswith("text (the skeleton could not"), \
            netlink.last_full_sync
        assert table_json(nl_ns) == table_json(text_ns)
        await netlink.resync()  # from now on the netlink path
        assert netlink.last_full_sync == "netlink"
        assert table_json(nl_ns) == table_json(text_ns)
    finally:
        await text.close()
        await netlink.close()


async def test_resync_keeps_an_established_connection(lab: Lab) -> None:
    nodes = [lab.node()]
    cluster = Cluster(lab, nodes)
    client = cluster.add_task("client", 0)
    for name in ("b1", "b2"):
        lab.spawn(cluster.add_task(name, 0), sys.executable, NETTOOL, "echo", name, "7000")
    await OverlayNode(nodes[0].underlay, netns=nodes[0].ns).sync(cluster.state(0))
    vip = str(cluster.alloc.allocate_vip("appnet", "demo/web"))
    service = VirtualService.make(vip, 80, "tcp", [f"{cluster.ip(b)}:7000"
                                                  for b in ("b1", "b2")])
    lb = NftablesLoadBalancer(netns=nodes[0].ns)
    holder = None
    try:
        await lb.sync([service, *every_kind(50)])

        def say(host: str, port: int) -> str:
            return lab.exec(client, sys.executable, NETTOOL, "say", host, str(port),
                            "hi").stdout.strip()

        def answers(backend: str) -> bool:
            return say(cluster.ip(backend), 7000) == f"{backend} hi"

        for b in ("b1", "b2"):  # the servers are up
            eventually_sync(lambda b=b: answers(b), what=f"{b} answering")  # type: ignore[misc]
        holder = hold(client, vip, 80)

        def exchange(text: str) -> str:
            assert holder is not None and holder.stdin and holder.stdout
            holder.stdin.write(text + "\n")
            holder.stdin.flush()
            return holder.stdout.readline().strip()

        first = exchange("one")
        assert first in ("b1 one", "b2 one")
        backend = first.split()[0]
        await lb.resync()  # the whole table rewritten, as after an agent restart
        assert lb.last_full_sync == "netlink"
        assert exchange("two") == f"{backend} two"
        # A new balancer's first sync (a restarted agent) over the existing table.
        restarted = NftablesLoadBalancer(netns=nodes[0].ns)
        try:
            await restarted.sync([service, *every_kind(50)])
        finally:
            await restarted.close()
        assert exchange("three") == f"{backend} three"
        # New connections are balanced as before.
        assert {say(vip, 80) for _ in range(20)} == {"b1 hi", "b2 hi"}
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        await lb.close()


class Monitor:
    """``nft monitor`` in a namespace: every change to its ruleset, as text. Ready once
    constructed: nft subscribes a moment after it starts, and a change made before that
    would be missed, so markers are added until one is seen."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, "nft", "monitor"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.lines: list[str] = []
        self._mark = 0
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 30
        while self._marker(wait=0.5) is None:
            if time.monotonic() > deadline:
                self.close()
                raise AssertionError("nft monitor did not report a change within 30 s")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.strip())
        self._queue.put(None)

    async def writes_during(self, action: Awaitable[T]) -> tuple[T, list[str]]:
        """Run ``action``; return its result and every ruleset change made meanwhile by
        anything but the test's own ``nft`` markers (a table added before and after)."""
        start = self._marker()
        result = await action
        end = self._marker()
        assert start is not None and end is not None
        return result, [line for line in self.lines[start:end - 1]
                        if "mark" not in line and not line.endswith("(nft)")]

    def _marker(self, wait: float = 60) -> int | None:
        """Add a marker table; the number of lines up to its event (None: not seen
        within ``wait`` seconds)."""
        self._mark += 1
        name = f"mark{self._mark}"
        sh("ip", "netns", "exec", self.ns, "nft", "add", "table", "ip", name)
        deadline = time.monotonic() + wait
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if line is None:
                raise AssertionError(f"nft monitor ended; saw {self.lines}")
            self.lines.append(line)
            if line.startswith(f"add table ip {name}"):
                return len(self.lines)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


async def test_repair_puts_back_exactly_what_drifted(lab: Lab) -> None:
    ns = lab.ns("lb")
    services = every_kind(40)
    web = VirtualService.make("10.254.9.1", 80, "tcp",
                              [f"10.9.0.{j + 1}:8080" for j in range(10)])
    lb = NftablesLoadBalancer(netns=ns)

    def nft(*argv: str) -> str:
        return sh("ip", "netns", "exec", ns, "nft", *argv).stdout

    monitor = Monitor(ns)
    try:
        await lb.sync([web, *services])
        want = table_json(ns)

        # No drift: nothing reported, and nothing written (nft monitor sees only the
        # test's own markers).
        report, writes = await monitor.writes_during(lb.repair())
        assert (report, writes) == ([], [])

        # One backend element deleted by hand.
        nft("delete", "element", "ip", "shoal", "be_tcp", "{ 10.254.9.1 . 80 . 3 }")
        report, writes = await monitor.writes_during(lb.repair())
        assert report == ["restored 1 backends of 10.254.9.1:80/tcp in set be_tcp"]
        # ... with one write, of that element (which also shows the watcher sees ours).
        assert [w for w in writes if not w.startswith("#")] == [
            "add element ip shoal be_tcp { 10.254.9.1 . 80 . 3 : 10.9.0.4 . 8080 }"], writes
        assert table_json(ns) == want
        # The whole service: its dispatch entry and all ten backends.
        nft("delete", "element", "ip", "shoal", "svc", "{ 10.254.9.1 . tcp . 80 }")
        nft("delete", "element", "ip", "shoal", "be_tcp",
            "{ " + ", ".join(f"10.254.9.1 . 80 . {j}" for j in range(10)) + " }")
        assert await lb.repair() == [
            "restored the dispatch of 10.254.9.1:80/tcp in set svc",
            "restored 10 backends of 10.254.9.1:80/tcp in set be_tcp"]
        assert table_json(ns) == want
        # A stray element added by hand is removed.
        nft("add", "element", "ip", "shoal", "vips", "{ 192.0.2.7 }")
        assert await lb.repair() == ["removed 1 stray element(s) from set vips: 192.0.2.7"]
        # A chain deleted, another's rules flushed.
        nft("delete", "chain", "ip", "shoal", "postrouting")
        nft("flush", "chain", "ip", "shoal", "services")
        assert await lb.repair() == [
            "chain postrouting of table ip shoal was missing: restored",
            "rules of chain services of table ip shoal differed: rewritten"]
        assert table_json(ns) == want
        # The whole table.
        nft("delete", "table", "ip", "shoal")
        assert await lb.repair() == ["table ip shoal was missing: rebuilt"]
        assert table_json(ns) == want
        assert lb.last_full_sync == "netlink"
        # And after all that, quiet again.
        report, writes = await monitor.writes_during(lb.repair())
        assert (report, writes) == ([], [])
    finally:
        monitor.close()
        await lb.close()


async def test_repair_restores_base_chains_and_removes_what_is_not_shoals(lab: Lab) -> None:
    """A base chain's priority or policy changed by hand, a base chain made a regular
    one, and sets, maps and chains added to the table (referring to each other): repair()
    recreates exactly those chains, removes the strangers, says so, and then is quiet."""
    ns = lab.ns("lb")
    lb = NftablesLoadBalancer(netns=ns)

    def nft(script: str) -> None:
        sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=script)

    monitor = Monitor(ns)
    try:
        await lb.sync(every_kind(30))
        want = table_json(ns)
        # The kernel cannot change a priority in place: a hand edit recreates the chain.
        nft("delete chain ip shoal martians\n"
            "add chain ip shoal martians { type filter hook prerouting priority -200; "
            "policy accept; }\n"
            'add rule ip shoal martians iifname != "lo" ip daddr 127.0.0.0/8 drop\n')
        nft("add chain ip shoal forward { type filter hook forward priority 0; "
            "policy drop; }\n")
        nft("delete chain ip shoal filter_output\n"
            "add chain ip shoal filter_output\n"
            "add rule ip shoal filter_output ip daddr @vips jump reject_vip\n")
        nft("add set ip shoal stray { type ipv4_addr; }\n"
            "add element ip shoal stray { 192.0.2.1, 192.0.2.2 }\n"
            "add chain ip shoal mine\n"
            "add rule ip shoal mine ip saddr @stray drop\n"
            "add map ip shoal strayvmap { type ipv4_addr : verdict; }\n"
            "add element ip shoal strayvmap { 192.0.2.3 : jump mine }\n"
            "add rule ip shoal services jump mine\n")
        report, writes = await monitor.writes_during(lb.repair())
        shoals = "type filter hook {} priority {} policy accept"
        assert report == [
            f"chain filter_output of table ip shoal differed (a regular chain; Shoal's: "
            f"{shoals.format('output', 0)}): recreated",
            f"chain forward of table ip shoal differed (type filter hook forward priority 0 "
            f"policy drop; Shoal's: {shoals.format('forward', 0)}): recreated",
            f"chain martians of table ip shoal differed ({shoals.format('prerouting', -200)}; "
            f"Shoal's: {shoals.format('prerouting', -300)}): recreated",
            "rules of chain services of table ip shoal differed: rewritten",
            "chain mine is not Shoal's: removed from table ip shoal",
            "set stray is not Shoal's: removed from table ip shoal",
            "set strayvmap is not Shoal's: removed from table ip shoal"], report
        assert table_json(ns) == want
        # Only those chains and sets were written: no element, no other chain.
        touched = {"filter_output", "forward", "martians", "services", "mine", "stray",
                   "strayvmap"}
        changes = [w for w in writes if not w.startswith("#")]
        # ("delete rule ip shoal services handle 39", "add chain ip shoal forward { ... }")
        assert changes and all(w.split()[1] in ("rule", "chain", "set")
                               and w.split()[4] in touched for w in changes), writes
        # And with nothing drifted, nothing is written.
        report, writes = await monitor.writes_during(lb.repair())
        assert (report, writes) == ([], [])
    finally:
        monitor.close()
        await lb.close()


async def test_a_restarted_balancer_adopts_the_table_and_writes_only_the_drift(
        lab: Lab) -> None:
    """A new balancer's first sync (a restarted agent) over the table an earlier one
    wrote: nothing written when nothing changed; only the drift when something did; and
    a table of an older layout (a chain missing, one extra) ends up exactly right."""
    ns, text_ns = lab.ns("lb"), lab.ns("text")
    web = VirtualService.make("10.254.9.1", 80, "tcp",
                              [f"10.9.0.{j + 1}:8080" for j in range(10)])
    services = [web, *every_kind(60)]

    def nft(script: str) -> None:
        sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=script)

    monitor = Monitor(ns)
    first = NftablesLoadBalancer(netns=ns)
    try:
        await first.sync(services)
    finally:
        await first.close()
    want = table_json(ns)
    try:
        # Nothing changed while no agent ran: not one add or delete.
        lb = NftablesLoadBalancer(netns=ns)
        try:
            _, writes = await monitor.writes_during(lb.sync(services))
            assert writes == []
            assert lb.last_full_sync == "adopted"
            assert lb.adoption_report() == []
            assert lb.services == {s.key: s for s in services}
            assert table_json(ns) == want
            # The adopted model is the balancer's own: repair() agrees, and a change
            # writes just that service's elements.
            assert await lb.repair() == []
            shrunk = VirtualService(web.vip, web.port, web.protocol, web.backends[:9])
            _, writes = await monitor.writes_during(lb.update_service(shrunk))
            changes = [w for w in writes if not w.startswith("#")]
            assert changes and all("lb_tcp_9" in w or "lb_tcp_10" in w or "10.254.9.1 . " in w
                                   for w in changes), writes
            # web was lb_tcp_10's only user: that chain went in the same batch.
            assert "delete chain ip shoal lb_tcp_10" in changes, changes
            # Back to ten: lb_tcp_9's last user left, so the same batch deleted it.
            _, writes = await monitor.writes_during(lb.update_service(web))
            assert "delete chain ip shoal lb_tcp_9" in writes, writes
            assert await lb.repair() == []
        finally:
            await lb.close()
        assert table_json(ns) == want

        # Drift while no agent ran: a backend element deleted, a policy changed. The
        # restarted balancer writes those two things and says so.
        nft("delete element ip shoal be_tcp { 10.254.9.1 . 80 . 3 }\n"
            "add chain ip shoal forward { type filter hook forward priority 0; "
            "policy drop; }\n")
        lb = NftablesLoadBalancer(netns=ns)
        try:
            _, writes = await monitor.writes_during(lb.sync(services))
            assert lb.adoption_report() == [
                "chain forward of table ip shoal differed (type filter hook forward "
                "priority 0 policy drop; Shoal's: type filter hook forward priority 0 "
                "policy accept): recreated",
                "restored 1 backends of 10.254.9.1:80/tcp in set be_tcp"]
            changes = [w for w in writes if not w.startswith("#")]
            assert changes and all(
                " ip shoal forward" in w or w == "add element ip shoal be_tcp "
                "{ 10.254.9.1 . 80 . 3 : 10.9.0.4 . 8080 }" for w in changes), writes
        finally:
            await lb.close()
        assert table_json(ns) == want
    finally:
        monitor.close()

    # An older layout: no martians chain, an extra chain, stray elements and sets; and
    # the restarted agent is told of fewer services. The result is exactly the table
    # the text path writes for them.
    nft("delete chain ip shoal martians\n"
        "add chain ip shoal legacy\n"
        "add rule ip shoal legacy counter\n"
        "add rule ip shoal prerouting jump legacy\n"
        "add set ip shoal oldvips { type ipv4_addr; }\n")
    fewer = [VirtualService(s.vip, s.port, s.protocol, s.backends[:2])
             for s in services[::3]]
    text = NftablesLoadBalancer(netns=text_ns, full_sync="text")
    lb = NftablesLoadBalancer(netns=ns)
    try:
        await text.sync(fewer)
        await lb.sync(fewer)
        assert lb.last_full_sync == "adopted"
        report = lb.adoption_report()
        for line in ["chain martians of table ip shoal was missing: restored",
                     "rules of chain prerouting of table ip shoal differed: rewritten",
                     "chain legacy is not Shoal's: removed from table ip shoal",
                     "set oldvips is not Shoal's: removed from table ip shoal"]:
            assert line in report, report
        assert table_json(ns) == table_json(text_ns)
        assert await lb.repair() == []
    finally:
        await text.close()
        await lb.close()


class ConcurrentAdmin(NftRunner):
    """A real runner; after the balancer's skeleton transaction it deletes one chain, as
    an administrator acting between the two transactions of a full sync would."""

    def __init__(self, netns: str, chain: str) -> None:
        super().__init__(netns)
        self.chain = chain
        self.armed = False

    async def run(self, script: str) -> str:
        out = await super().run(script)
        if self.armed and script.startswith("add table"):
            self.armed = False
            await super().run(f"delete chain ip shoal {self.chain}\n")
        return out


async def test_kernel_refusal_names_the_element_and_changes_nothing(lab: Lab) -> None:
    ns = lab.ns("lb")
    before = [VirtualService.make("10.254.0.1", 80, "tcp", ["10.1.0.1:80"])]
    first = NftablesLoadBalancer(netns=ns)
    try:
        await first.sync(before)
        assert first.last_full_sync == "netlink"
    finally:
        await first.close()
    table = table_json(ns)
    # A restarted agent's first (full) sync; the chain its new service needs is deleted
    # between the skeleton transaction and the element batch.
    runner = ConcurrentAdmin(ns, "lb_tcp_2")
    lb = NftablesLoadBalancer(runner=runner)
    try:
        runner.armed = True
        new = VirtualService.make("10.254.0.2", 80, "tcp", ["10.1.0.2:80", "10.1.0.3:80"])
        with pytest.raises(NftError) as failure:
            await lb.sync([*before, new])
        message = str(failure.value)
        assert "10.254.0.2 . tcp . 80 : goto lb_tcp_2" in message, message
        assert "nothing was changed" in message
        assert lb.services == {}
        # The batch was one transaction: not one of its elements went in.
        assert table_json(ns) == table
        # The next full sync succeeds.
        await lb.sync([*before, new])
        assert lb.services == {s.key: s for s in [*before, new]}
        got = sh("ip", "netns", "exec", ns, "nft", "list", "map", "ip", "shoal", "svc").stdout
        assert "10.254.0.2 . tcp . 80 : goto lb_tcp_2" in got
    finally:
        await lb.close()


async def test_ten_thousand_services_sync_and_repair(lab: Lab) -> None:
    """Correctness at bench size (bench/dataplane.py times it)."""
    ns = lab.ns("big")
    services = dataplane_bench.services(10_000, 10)  # what bench/dataplane.py times
    lb = NftablesLoadBalancer(netns=ns)
    try:
        t0 = time.monotonic()
        await lb.sync(services)
        assert time.monotonic() - t0 < 120  # a hang guard, not a benchmark
        assert lb.last_full_sync == "netlink"
        # (nft reads all 110,000 elements for any query: minutes allowed on a busy host.)
        got = sh("ip", "netns", "exec", ns, "nft", "get", "element", "ip", "shoal", "be_tcp",
                 "{ 10.254.0.34 . 80 . 7, 10.254.39.250 . 80 . 9 }", timeout=180).stdout
        assert "10.1.33.8 . 8080" in got and "10.40.249.10 . 8080" in got
        sh("ip", "netns", "exec", ns, "nft", "flush", "map", "ip", "shoal", "be_tcp",
           timeout=180)
        report = await lb.repair()
        assert report == ["restored 100000 backends element(s) of 10000 services in set "
                          "be_tcp (10.254.0.100:80/tcp, 10.254.0.101:80/tcp, "
                          "10.254.0.102:80/tcp, ...)"]
        assert await lb.repair() == []
    finally:
        await lb.close()
    # A restarted agent's balancer adopts the 10,000 services as they are.
    restarted = NftablesLoadBalancer(netns=ns)
    try:
        await restarted.sync(services)
        assert restarted.last_full_sync == "adopted"
        assert restarted.adoption_report() == []
        assert await restarted.repair() == []
    finally:
        await restarted.close()
