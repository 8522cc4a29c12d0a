"""Service discovery: the DNS responder each node runs for its tasks.

It listens (UDP and TCP, port 53) on the node's own address on every network the node
hosts -- the address the tasks already use as their gateway -- so each query arrives on a
listener that knows the client's network. Answers come from a :class:`DnsTable` the agent
keeps current from etcd:

* ``<service>`` -> the service's VIP on that network, or its task addresses for endpoint
  mode dnsrr; ``tasks.<service>`` -> the task addresses on that network, always;
* an alias a service has on a network (``spec.networks[].aliases``; ``stack deploy``
  gives every stack service its compose name) answers like the service's name --
  ``<alias>``, ``tasks.<alias>``, ``<alias>.<namespace>`` -- but only to clients on that
  network, as Docker scopes aliases to their network. Looked up like a name (client's
  namespace, then ``default``), then -- since an alias belongs to its network, as in
  Docker, which has no namespaces -- among every namespace's aliases on that network, so
  a service of another stack on a shared network is found by its alias. A service's own
  name wins over another's alias; services sharing an alias on a network all answer it
  (their VIPs, or task addresses, together), as Docker's resolver does;
* ``<service>.<namespace>`` qualifies by stack; a short name resolves in the client's own
  namespace (the namespace of the task that owns the source address), then in
  ``default``; only services attached to the client's networks are visible;
* a task attached to several networks asks the listener of one of them (its resolver is
  the node's address on its first network), yet sees every service of all of them, as
  Docker's resolver does for a container: the name is looked up on the network the query
  came in on first, then on the task's other networks in order (``set_clients``: the
  agent says which networks each local task's addresses belong to), and the answer holds
  the addresses on the network where it was found, which the task is attached to;
* a service answers to its name as written, case-insensitively, dots included
  (``hyperf_v1.0``), and to its DNS-label form ``crds.names.dns_label``
  (``hyperf-v1-0-53ef21``) for clients that insist on hostname syntax; a namespace (a
  stack: ``my_app.v1``) likewise answers as written and as its label form;
* since both parts may hold dots, a dotted name is read in a fixed order: first whole, as
  a service (client's namespace, then ``default``); then split at each dot from the right
  (``a.b.c``: ``a.b`` in ``c``, then ``a`` in ``b.c``), the first split naming a visible
  service in an existing namespace winning. Right to left keeps the plain
  ``<service>.<namespace>`` reading first and makes the answer a function of the table;
* a single-label name, a ``tasks.`` name, a service's name, or a name ending in a known
  namespace is the cluster's: unknown ones get NXDOMAIN. Everything else is
  forwarded to the host's upstream resolvers (/etc/resolv.conf) with a timeout, SERVFAIL
  when none answers.

dnspython does the wire format and the upstream queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from shoal.crds.names import dns_label
from shoal.net import netns as netns_mod

IPv4Address = ipaddress.IPv4Address
DEFAULT_TTL = 5  # short: VIPs are stable, but dnsrr task lists change with every deploy
IP_FREEBIND = 15  # bind before the bridge address is configured (agent start order)


@dataclass(frozen=True)
class ServiceRecord:
    namespace: str
    name: str
    mode: Literal["vip", "dnsrr"] = "vip"
    vips: Mapping[str, IPv4Address] = field(default_factory=dict)  # network -> VIP
    tasks: Mapping[str, Sequence[IPv4Address]] = field(default_factory=dict)  # network -> IPs
    aliases: Mapping[str, Sequence[str]] = field(default_factory=dict)  # network -> names


@dataclass(frozen=True)
class Answer:
    kind: Literal["records", "nxdomain", "forward"]
    addresses: tuple[IPv4Address, ...] = ()


class DnsTable:
    """Names by network, rebuilt incrementally as services change."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], ServiceRecord] = {}
        # (namespace, DNS-label form) -> the record's key, for names that are not labels.
        self._labels: dict[tuple[str, str], tuple[str, str]] = {}
        self._owner: dict[tuple[str, IPv4Address], str] = {}  # (network, task ip) -> ns
        self._namespaces: dict[str, int] = {}  # namespace -> its services in the table
        # DNS-label form of a namespace that is not a label -> (namespace, services using it)
        self._ns_labels: dict[str, tuple[str, int]] = {}
        # alias (as written and as its label form, lower case) -> the keys of the records
        # that carry it on some network.
        self._aliases: dict[str, set[tuple[str, str]]] = {}
        # (network, a local task's address on it) -> every network of that task, in order.
        self._clients: dict[tuple[str, IPv4Address], tuple[str, ...]] = {}

    def set_clients(self, clients: Mapping[tuple[str, IPv4Address], Sequence[str]]) -> None:
        """The networks of each local task, by its address on each of them."""
        self._clients = {k: tuple(v) for k, v in clients.items()}

    def set(self, record: ServiceRecord) -> None:
        self.remove(record.namespace, record.name)
        key = (record.namespace.lower(), record.name.lower())
        self._records[key] = record
        label = dns_label(record.name)
        if label != key[1]:
            self._labels[(key[0], label)] = key
        self._namespaces[key[0]] = self._namespaces.get(key[0], 0) + 1
        ns_label = dns_label(record.namespace)
        if ns_label != key[0]:
            _, uses = self._ns_labels.get(ns_label, (key[0], 0))
            self._ns_labels[ns_label] = (key[0], uses + 1)
        for network, ips in record.tasks.items():
            for ip in ips:
                self._owner[(network, ip)] = key[0]
        for alias in _alias_keys(record):
            self._aliases.setdefault(alias, set()).add(key)

    def remove(self, namespace: str, name: str) -> None:
        key = (namespace.lower(), name.lower())
        old = self._records.pop(key, None)
        if old is None:
            return
        label_key = (key[0], dns_label(old.name))
        if self._labels.get(label_key) == key:
            del self._labels[label_key]
        self._namespaces[key[0]] -= 1
        if not self._namespaces[key[0]]:
            del self._namespaces[key[0]]
        ns_label = dns_label(old.namespace)
        if ns_label in self._ns_labels:
            ns, uses = self._ns_labels[ns_label]
            if uses > 1:
                self._ns_labels[ns_label] = (ns, uses - 1)
            else:
                del self._ns_labels[ns_label]
        for network, ips in old.tasks.items():
            for ip in ips:
                if self._owner.get((network, ip)) == key[0]:
                    del self._owner[(network, ip)]
        for alias in _alias_keys(old):
            holders = self._aliases.get(alias)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self._aliases[alias]

    def replace_all(self, records: Iterable[ServiceRecord]) -> None:
        self._records.clear()
        self._labels.clear()
        self._owner.clear()
        self._namespaces.clear()
        self._ns_labels.clear()
        self._aliases.clear()
        for r in records:
            self.set(r)

    def resolve(self, network: str, qname: str, client: IPv4Address | None = None) -> Answer:
        name = qname.lower().rstrip(".")
        is_tasks = name.startswith("tasks.") and len(name) > len("tasks.")
        ref = name[len("tasks."):] if is_tasks else name
        namespace = None if client is None else self._owner.get((network, client))
        others = () if client is None else self._clients.get((network, client), ())
        ours = False
        records: list[ServiceRecord] = []
        for net in (network, *(n for n in others if n != network)):
            records, ours_here = self._find(net, ref, namespace)
            ours = ours or ours_here
            if records:
                network = net  # answer with the addresses on the network it was found on
                break
        if not records:
            return Answer("nxdomain") if ours or is_tasks else Answer("forward")
        found: list[IPv4Address] = []
        for record in records:
            if is_tasks or record.mode == "dnsrr":
                found.extend(record.tasks.get(network, ()))
            elif (vip := record.vips.get(network)) is not None:
                found.append(vip)
        addresses = list(dict.fromkeys(found))
        if len(addresses) > 1:
            random.shuffle(addresses)  # spread clients, like Docker's dnsrr
        return Answer("records", tuple(addresses))

    def _visible(self, key: tuple[str, str], network: str) -> list[ServiceRecord]:
        """The service ``key`` names if it is on ``network``; else the services that have
        that alias on ``network`` (by name, so the answer is a function of the table)."""
        record = self._records.get(key)
        if record is None and key in self._labels:
            record = self._records.get(self._labels[key])
        if record is not None and (network in record.vips or network in record.tasks):
            return [record]
        return self._aliased(key[1], network, key[0])

    def _aliased(self, alias: str, network: str, namespace: str | None) -> list[ServiceRecord]:
        """The services (of ``namespace``, or of any) that have ``alias`` on ``network``,
        by key, so the answer is a function of the table."""
        holders = self._aliases.get(alias) or ()
        records = (self._records[k] for k in sorted(holders)
                   if namespace is None or k[0] == namespace)
        return [r for r in records if alias in _alias_keys(r, network)]

    def _find(self, network: str, ref: str, namespace: str | None
              ) -> tuple[list[ServiceRecord], bool]:
        """The record ``ref`` names on ``network``, and whether the name is the cluster's
        to answer; ``namespace``: the client's.

        The whole name is a service name first (Docker's names may hold dots:
        ``hyperf_v1.0``), in the client's namespace then ``default``; only then is it read
        as ``<service>.<namespace>``, split at each dot from the right (stack names may
        hold dots too: ``web.my_app.v1``); the first split that names a visible service in
        an existing namespace wins."""
        if not ref:
            return [], False
        order = [] if namespace is None else [namespace]
        order.append("default")
        for ns in order:
            found = self._visible((ns, ref), network)
            if found:
                return found, True
        # An alias belongs to its network, whoever declared it (Docker has no namespaces):
        # a service of another stack on a shared network is found by its alias there.
        found = self._aliased(ref, network, None)
        if found:
            return found, True
        if "." not in ref:
            return [], True  # a single label is always ours
        ours = False
        cut = len(ref)
        while (cut := ref.rfind(".", 0, cut)) > 0:
            namespace = self._namespace(ref[cut + 1:])
            if namespace is None:
                continue
            ours = True  # it ends in a known namespace: never sent upstream
            found = self._visible((namespace, ref[:cut]), network)
            if found:
                return found, True
        return [], ours

    def _namespace(self, text: str) -> str | None:
        """The namespace (table key) ``text`` names, as written or as its label form."""
        if text in self._namespaces:
            return text
        entry = self._ns_labels.get(text)
        return None if entry is None else entry[0]


def _alias_keys(record: ServiceRecord, network: str | None = None) -> set[str]:
    """The names (lower case, as written and as DNS labels) ``record``'s aliases answer
    to, on ``network`` or on any."""
    nets = record.aliases.values() if network is None else [record.aliases.get(network, ())]
    return {form for names in nets for alias in names
            for form in (alias.lower(), dns_label(alias))}


def upstreams_from_resolv_conf(path: str = "/etc/resolv.conf") -> list[str]:
    servers: list[str] = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    servers.append(parts[1])
    except OSError:
        pass
    return servers


class DnsServer:
    """One responder for the node; a listener (UDP + TCP) per network."""

    def __init__(self, table: DnsTable, upstreams: Sequence[str | tuple[str, int]] | None = None,
                 *, timeout: float = 2.0, ttl: int = DEFAULT_TTL) -> None:
        self.table = table
        raw = upstreams if upstreams is not None else upstreams_from_resolv_conf()
        self.upstreams = [(u, 53) if isinstance(u, str) else u for u in raw]
        self.timeout = timeout
        self.ttl = ttl
        self._listeners: dict[str, tuple[asyncio.DatagramTransport, asyncio.Server]] = {}

    # ---- listeners -----------------------------------------------------------------------

    async def listen(self, network: str, host: str, port: int = 53, *,
                     netns: str | None = None) -> tuple[str, int]:
        """Answer queries for ``network`` on ``host:port`` (inside ``netns`` when given,
        e.g. a node namespace). Returns the bound address (port 0 picks one)."""
        if network in self._listeners:
            await self.unlisten(network)
        loop = asyncio.get_running_loop()
        udp_sock = await _socket(socket.SOCK_DGRAM, netns)
        tcp_sock = await _socket(socket.SOCK_STREAM, netns)
        try:
            udp_sock.bind((host, port))
            bound = udp_sock.getsockname()
            tcp_sock.bind((host, bound[1]))
            tcp_sock.listen(64)
        except OSError:
            udp_sock.close()
            tcp_sock.close()
            raise
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self, network), sock=udp_sock)

        async def on_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve_tcp(network, reader, writer)

        server = await asyncio.start_server(on_tcp, sock=tcp_sock)
        self._listeners[network] = (transport, server)
        return bound[0], bound[1]

    async def unlisten(self, network: str) -> None:
        entry = self._listeners.pop(network, None)
        if entry is not None:
            entry[0].close()
            entry[1].close()
            await entry[1].wait_closed()

    async def close(self) -> None:
        for network in list(self._listeners):
            await self.unlisten(network)

    @property
    def networks(self) -> list[str]:
        return list(self._listeners)

    # ---- answering -----------------------------------------------------------------------

    async def handle(self, network: str, wire: bytes, client: IPv4Address | None,
                     *, tcp: bool = False) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # not DNS: stay silent, like any resolver
        if query.opcode() != 0 or len(query.question) != 1:
            return self._error(query, dns.rcode.NOTIMP).to_wire()
        q = query.question[0]
        answer = self.table.resolve(network, q.name.to_text(), client)
        if answer.kind == "forward":
            return await self._forward(query, tcp=tcp)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA | dns.flags.RA
        if answer.kind == "nxdomain":
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif q.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY) and answer.addresses:
            response.answer.append(dns.rrset.from_text_list(
                q.name, self.ttl, dns.rdataclass.IN, dns.rdatatype.A,
                [str(a) for a in answer.addresses]))
        # Other types of a known name: NOERROR with no data, so clients fall back to A.
        wire_out = response.to_wire(max_size=65535 if tcp else _udp_limit(query))
        return wire_out

    def _error(self, query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        return response

    async def _forward(self, query: dns.message.Message, *, tcp: bool) -> bytes:
        for host, port in self.upstreams:
            try:
                if tcp:
                    reply = await dns.asyncquery.tcp(query, host, timeout=self.timeout,
                                                     port=port)
                else:
                    reply = await dns.asyncquery.udp(query, host, timeout=self.timeout,
                                                     port=port, ignore_trailing=True)
                return reply.to_wire()
            except (dns.exception.DNSException, OSError):
                continue  # next upstream
        return self._error(query, dns.rcode.SERVFAIL).to_wire()

    async def _serve_tcp(self, network: str, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = _client_ip(peer)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), timeout=10)
                    (length,) = struct.unpack("!H", head)
                    wire = await reader.readexactly(length)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                reply = await self.handle(network, wire, client, tcp=True)
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer, network: str) -> None:
        self.server = server
        self.network = network
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's transport is not a DatagramTransport subclass: cast.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        task = asyncio.ensure_future(self._answer(data, addr))
        self._tasks.add(task)  # keep a reference until it finishes
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, data: bytes, addr: tuple[str | object, int]) -> None:
        reply = await self.server.handle(self.network, data, _client_ip(addr))
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


def _client_ip(peer: object) -> IPv4Address | None:
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        with contextlib.suppress(ValueError):
            return ipaddress.IPv4Address(peer[0])
    return None


def _udp_limit(query: dns.message.Message) -> int:
    # EDNS advertises the client's buffer; without it the classic 512 bytes apply, and
    # dnspython sets TC when the answer does not fit, so the client retries over TCP.
    return max(512, query.payload) if query.edns >= 0 else 512


async def _socket(kind: socket.SocketKind, netns: str | None) -> socket.socket:
    if netns is None:
        sock = socket.socket(socket.AF_INET, kind)
    else:
        # Made on a thread that entered the namespace (netns.run_in), not in a child
        # forked by pyroute2's create_socket: a fork of the agent (gRPC's threads, a
        # gigabyte of heap at 100,000 tasks) was seen to die with SIGSEGV before its
        # socket came back, failing the whole dataplane pass.
        def make() -> socket.socket:
            return socket.socket(socket.AF_INET, kind)
        sock = await asyncio.to_thread(netns_mod.run_in, netns_mod.path(netns), make)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    sock.setblocking(False)
    return sock
