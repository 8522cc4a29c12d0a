"""The node DNS responder over real sockets: service, tasks. and stack-qualified names over
UDP and TCP, Docker's names (``hyperf_v1.0``, a stack ``my_app.v1``: ``web.my_app.v1``) as
written and as DNS labels, forwarding to a fake upstream on loopback, and queries from
inside a task namespace (dnspython, and busybox ``nslookup`` as a user types it) to the
responder on its node's overlay address."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import struct
import sys
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from shoal.crds.names import dns_label
from shoal.net.dns import DnsServer, DnsTable, ServiceRecord
from shoal.net.overlay import OverlayNode
from tests.e2e.netcluster import Cluster
from tests.e2e.netlab import Lab, have_netns_privileges

A = ipaddress.IPv4Address
UPSTREAM_ANSWER = "192.0.2.77"


def _loopback() -> str:
    """A loopback address of our own, so parallel runs never share a socket."""
    return f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}.1"


class FakeUpstream:
    """Answers every A query with UPSTREAM_ANSWER, over UDP and TCP; counts queries."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def answer(self, wire: bytes) -> bytes:
        q = dns.message.from_wire(wire)
        self.queries.append(q.question[0].name.to_text())
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A",
                                            UPSTREAM_ANSWER))
        return r.to_wire()

    async def start(self, host: str) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        upstream = self

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.t.sendto(upstream.answer(data), addr)  # type: ignore[attr-defined]

        self.udp, _ = await loop.create_datagram_endpoint(Proto, local_addr=(host, 0))
        port = self.udp.get_extra_info("sockname")[1]

        async def on_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
            reply = self.answer(await reader.readexactly(n))
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
            writer.close()

        self.tcp = await asyncio.start_server(on_tcp, host, port)
        return host, port

    async def stop(self) -> None:
        self.udp.close()
        self.tcp.close()
        await self.tcp.wait_closed()


def table() -> DnsTable:
    t = DnsTable()
    t.set(ServiceRecord("shop", "web", "vip", {"appnet": A("10.254.0.5")},
                        {"appnet": [A("10.0.9.10"), A("10.0.9.11"), A("127.1.2.3")]}))
    t.set(ServiceRecord("shop", "db", "dnsrr", {},
                        {"appnet": [A("10.0.9.20"), A("10.0.9.21")]}))
    t.set(ServiceRecord("default", "web", "vip", {"appnet": A("10.254.0.9")},
                        {"appnet": [A("10.0.9.30")]}))
    t.set(ServiceRecord("default", "hidden", "vip", {"othernet": A("10.254.1.5")},
                        {"othernet": [A("10.0.10.2")]}))
    return t


@pytest.fixture
async def servers() -> AsyncIterator[tuple[FakeUpstream, DnsServer, tuple[str, int]]]:
    upstream = FakeUpstream()
    up_addr = await upstream.start(_loopback())
    server = DnsServer(table(), upstreams=[up_addr], timeout=1.0)
    try:
        addr = await server.listen("appnet", _loopback(), 0)
        yield upstream, server, addr
    finally:
        await server.close()
        await upstream.stop()


async def query(addr: tuple[str, int], name: str, *, tcp: bool = False,
                source: str | None = None, rdtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    if tcp:
        return await dns.asyncquery.tcp(q, addr[0], port=addr[1], timeout=3)
    return await dns.asyncquery.udp(q, addr[0], port=addr[1], timeout=3,
                                    source=source or "")


def addresses(msg: dns.message.Message) -> set[str]:
    return {r.address for rrset in msg.answer for r in rrset}


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_cluster_names(servers: tuple[FakeUpstream, DnsServer, tuple[str, int]],
                             tcp: bool) -> None:
    upstream, _, addr = servers
    # Qualified by stack namespace.
    assert addresses(await query(addr, "web.shop", tcp=tcp)) == {"10.254.0.5"}
    assert addresses(await query(addr, "tasks.web.shop", tcp=tcp)) == {
        "10.0.9.10", "10.0.9.11", "127.1.2.3"}
    assert addresses(await query(addr, "db.shop", tcp=tcp)) == {"10.0.9.20", "10.0.9.21"}
    # A short name from a client outside any stack resolves in "default".
    assert addresses(await query(addr, "web", tcp=tcp)) == {"10.254.0.9"}
    assert addresses(await query(addr, "tasks.web", tcp=tcp)) == {"10.0.9.30"}
    # Unknown cluster names, and services not on this network: NXDOMAIN, never forwarded.
    for name in ("nosuch", "tasks.nosuch", "nosuch.shop", "hidden"):
        reply = await query(addr, name, tcp=tcp)
        assert reply.rcode() == dns.rcode.NXDOMAIN, name
    # AAAA of a known name: no data, no error (clients then use the A answer).
    reply = await query(addr, "web.shop", tcp=tcp, rdtype="AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    # Everything else goes upstream.
    reply = await query(addr, "www.example.com", tcp=tcp)
    assert addresses(reply) == {UPSTREAM_ANSWER}
    assert upstream.queries == ["www.example.com."]


async def test_short_names_inside_a_stack(
        servers: tuple[FakeUpstream, DnsServer, tuple[str, int]]) -> None:
    _, _, addr = servers
    # 127.1.2.3 is a task of shop/web: its short names resolve in its own stack first.
    reply = await query(addr, "web", source="127.1.2.3")
    assert addresses(reply) == {"10.254.0.5"}
    assert addresses(await query(addr, "db", source="127.1.2.3")) == {
        "10.0.9.20", "10.0.9.21"}


async def test_docker_names_resolve_as_written_and_as_labels() -> None:
    t = table()
    t.set(ServiceRecord("default", "hyperf_v1.0", "vip", {"appnet": A("10.254.0.40")},
                        {"appnet": [A("10.0.9.40"), A("10.0.9.41")]}))
    t.set(ServiceRecord("shop", "nginx_web", "vip", {"appnet": A("10.254.0.50")},
                        {"appnet": [A("10.0.9.50")]}))
    # a_b and a-b are different services; their names never meet in DNS.
    t.set(ServiceRecord("default", "a_b", "vip", {"appnet": A("10.254.0.60")}, {}))
    t.set(ServiceRecord("default", "a-b", "vip", {"appnet": A("10.254.0.61")}, {}))
    t.set(ServiceRecord("my_app.v1", "web", "vip", {"appnet": A("10.254.0.70")},
                        {"appnet": [A("10.0.9.70")]}))
    t.set(ServiceRecord("my_app.v1", "hyperf_v1.0", "vip", {"appnet": A("10.254.0.71")}, {}))
    server = DnsServer(t, upstreams=[(_loopback(), 9)], timeout=0.3)
    try:
        addr = await server.listen("appnet", _loopback(), 0)
        # The name as written, case-insensitively, dots and underscores included.
        assert addresses(await query(addr, "hyperf_v1.0")) == {"10.254.0.40"}
        assert addresses(await query(addr, "HYPERF_V1.0", tcp=True)) == {"10.254.0.40"}
        assert addresses(await query(addr, "tasks.hyperf_v1.0")) == {"10.0.9.40", "10.0.9.41"}
        assert addresses(await query(addr, "nginx_web.shop")) == {"10.254.0.50"}
        assert addresses(await query(addr, "tasks.nginx_web.shop")) == {"10.0.9.50"}
        # The DNS-label form crds.names maps the name to answers too.
        label = dns_label("hyperf_v1.0")
        assert label.startswith("hyperf-v1-0-")
        assert addresses(await query(addr, label)) == {"10.254.0.40"}
        assert addresses(await query(addr, f"tasks.{label}")) == {"10.0.9.40", "10.0.9.41"}
        assert addresses(await query(addr, "a_b")) == {"10.254.0.60"}
        assert addresses(await query(addr, "a-b")) == {"10.254.0.61"}
        assert addresses(await query(addr, dns_label("a_b"))) == {"10.254.0.60"}
        # A stack (namespace) named the Docker way, dots and underscores included:
        # `web.my_app.v1` is web in my_app.v1 (split at each dot from the right; the
        # first split naming a service in an existing namespace wins), also by its label.
        assert addresses(await query(addr, "web.my_app.v1")) == {"10.254.0.70"}
        assert addresses(await query(addr, "tasks.web.my_app.v1", tcp=True)) == {"10.0.9.70"}
        assert addresses(await query(addr, "hyperf_v1.0.my_app.v1")) == {"10.254.0.71"}
        assert addresses(await query(addr, f"web.{dns_label('my_app.v1')}")) == {
            "10.254.0.70"}
        assert (await query(addr, "nosuch.my_app.v1")).rcode() == dns.rcode.NXDOMAIN
        # A dotted name that is neither a service nor <service>.<namespace>: not ours.
        assert (await query(addr, "hyperf_v1.9")).rcode() == dns.rcode.SERVFAIL  # forwarded
        assert (await query(addr, "tasks.hyperf_v1.9")).rcode() == dns.rcode.NXDOMAIN
    finally:
        await server.close()


async def test_upstream_down_is_servfail() -> None:
    server = DnsServer(DnsTable(), upstreams=[(_loopback(), 9)], timeout=0.3)
    try:
        addr = await server.listen("appnet", _loopback(), 0)
        reply = await query(addr, "www.example.com")
        assert reply.rcode() == dns.rcode.SERVFAIL
    finally:
        await server.close()


@pytest.mark.skipif(not have_netns_privileges(), reason="needs root and iproute2")
async def test_reachable_from_a_task_namespace(lab: Lab) -> None:
    node = lab.node()
    cluster = Cluster(lab, [node])
    task_ns = cluster.add_task("t1", 0)
    await OverlayNode(node.underlay, netns=node.ns).sync(cluster.state(0))
    t = DnsTable()
    t.set(ServiceRecord("default", "web", "vip", {"appnet": A("10.254.0.7")},
                        {"appnet": [A(cluster.ip("t1"))]}))
    server = DnsServer(t, upstreams=[])
    try:
        # Port 53 on the node's own address on the network, inside the node namespace.
        await server.listen("appnet", str(cluster.node_ip(0)), 53, netns=node.ns)
        code = ("import dns.message, dns.query, sys; "
                "q = dns.message.make_query(sys.argv[2], 'A'); "
                "r = dns.query.udp(q, sys.argv[1], timeout=3); "
                "print(' '.join(sorted(x.address for s in r.answer for x in s)))")
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", task_ns, sys.executable, "-c", code,
            str(cluster.node_ip(0)), "web", stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert out.decode().split() == ["10.254.0.7"]
    finally:
        await server.close()


@pytest.mark.skipif(not have_netns_privileges(), reason="needs root and iproute2")
async def test_nslookup_of_docker_names_inside_the_overlay(lab: Lab) -> None:
    node = lab.node()
    cluster = Cluster(lab, [node])
    task_ns = cluster.add_task("t1", 0)
    await OverlayNode(node.underlay, netns=node.ns).sync(cluster.state(0))
    t = DnsTable()
    t.set(ServiceRecord("default", "hyperf_v1.0", "vip", {"appnet": A("10.254.0.7")},
                        {"appnet": [A(cluster.ip("t1"))]}))
    t.set(ServiceRecord("default", "nginx_web", "vip", {"appnet": A("10.254.0.8")},
                        {"appnet": [A(cluster.ip("t1"))]}))
    t.set(ServiceRecord("my_app.v1", "web", "vip", {"appnet": A("10.254.0.9")},
                        {"appnet": [A(cluster.ip("t1"))]}))
    server = DnsServer(t, upstreams=[])
    try:
        await server.listen("appnet", str(cluster.node_ip(0)), 53, netns=node.ns)
        for name, want in (("hyperf_v1.0", "10.254.0.7"), ("tasks.nginx_web", cluster.ip("t1")),
                           ("web.my_app.v1", "10.254.0.9")):
            # What a user types in a task: `nslookup hyperf_v1.0` (busybox, as in the image).
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", task_ns, "busybox", "nslookup", name,
                str(cluster.node_ip(0)), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
            text = out.decode()
            assert proc.returncode == 0 and f"Address: {want}" in text, text
    finally:
        await server.close()
