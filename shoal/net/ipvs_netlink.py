"""IPVS in bulk: commands batched over one raw generic-netlink socket, and the kernel's
whole table read from ``/proc/net/ip_vs`` in one pass.

Why not one pyroute2 request per command: a full sync of 10,000 services x 10 real
servers is 110,000 commands, and each pyroute2 request is an asyncio round trip (encode
in Python, send, wait for the reader task, decode the ack) -- measured ~2 ms each under
user-mode-linux, ~4 minutes for the whole table. The kernel does not need that: generic
netlink runs every message of one ``sendmsg`` in order and acks each, so this module packs
a few hundred commands per system call with ``struct`` and matches the acks by sequence
number. pyroute2 still resolves the IPVS family (which also loads ip_vs on demand) and
serves the single-service reads of incremental changes (lb_ipvs.py).

Reading works the same way round: one ``GET_DEST`` dump per service would be 10,000
requests (and netlink allows one dump in flight per socket), while ``/proc/net/ip_vs``
lists every service with its real servers and forwarding methods in one read.

Attribute numbers and layouts are the kernel's uapi (``include/uapi/linux/ip_vs.h``):
addresses raw, ports big-endian, everything else host order; a new service needs
scheduler, flags, timeout and netmask, a new real server forwarding method, weight and
both thresholds, or the kernel answers EINVAL.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

from shoal.net import netns

NETLINK_ROUTE = 0
NETLINK_GENERIC = 16
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_DONE = 3
NLM_F_DUMP = 0x300
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
IFA_ADDRESS, IFA_LOCAL = 1, 2
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # acks without the echoed request: more of them fit the buffer
SO_RCVBUFFORCE = 33

CMD_NEW_SERVICE, CMD_DEL_SERVICE = 1, 3
CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST = 5, 6, 7
ATTR_SERVICE, ATTR_DEST = 1, 2
SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK = 1, 2, 3, 4, 5
SVC_SCHED_NAME, SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK = 6, 7, 8, 9
DEST_ADDR, DEST_PORT, DEST_FWD_METHOD, DEST_WEIGHT = 1, 2, 3, 4
DEST_U_THRESH, DEST_L_THRESH, DEST_ADDR_FAMILY = 5, 6, 11

# Forwarding method names in /proc/net/ip_vs, and their numbers in netlink.
FWD_BY_NAME = {"Masq": 0, "Local": 1, "Tunnel": 2, "Route": 3}

# Commands per sendmsg: the acks of one batch must fit the receive buffer even when all
# of them are errors; a few hundred also keeps each system call short.
BATCH = 512

T = TypeVar("T")


def _nla(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


# Templates: one ``struct`` call per attribute group, not one per attribute -- a full sync
# of 10,000 services x 10 real servers builds 110,000 commands, and per-attribute packing
# (plus ipaddress's own ``packed``) cost ~1.7 s of host CPU there. Addresses are packed as
# ``htonl(int(addr))`` in host order, which puts them in network order on the wire; ports
# the same with ``htons``.
_SVC_ADDR_KEY = struct.Struct("=HHH2x HHH2x HHI HHH2x")  # af, protocol, addr, port
_SVC_MARK_KEY = struct.Struct("=HHH2x HHI")  # af, fwmark
_SVC_REST = struct.Struct("=HHII HHI HHI")  # flags (flags, mask), timeout, netmask
_DEST_KEY = struct.Struct("=HHI HHH2x HHH2x")  # address, port, address family
_DEST_REST = struct.Struct("=HHI HHI HHI HHI")
_NLA_HDR = struct.Struct("=HH")


@dataclass(frozen=True)
class ServiceId:
    """An IPv4 IPVS service: by address, protocol number and port, or by fwmark."""

    addr: ipaddress.IPv4Address | None
    protocol: int
    port: int
    fwmark: int = 0
    # The nested service attribute identifying it, packed once per service.
    service_nla: bytes = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        key = self.key_attrs()
        object.__setattr__(self, "service_nla", _NLA_HDR.pack(4 + len(key), ATTR_SERVICE)
                           + key)

    def __str__(self) -> str:
        if self.fwmark:
            return f"fwmark {self.fwmark:#x}"
        return f"{self.addr}:{self.port}/{self.protocol}"

    def key_attrs(self) -> bytes:
        if self.fwmark:
            return _SVC_MARK_KEY.pack(6, SVC_AF, socket.AF_INET, 8, SVC_FWMARK, self.fwmark)
        assert self.addr is not None
        return _SVC_ADDR_KEY.pack(6, SVC_AF, socket.AF_INET, 6, SVC_PROTOCOL, self.protocol,
                                  8, SVC_ADDR, socket.htonl(int(self.addr)),
                                  6, SVC_PORT, socket.htons(self.port))

    def full_attrs(self, scheduler: str) -> bytes:
        return (self.key_attrs()
                + _nla(SVC_SCHED_NAME, scheduler.encode() + b"\0")
                + _SVC_REST.pack(12, SVC_FLAGS, 0, 0xFFFFFFFF, 8, SVC_TIMEOUT, 0,
                                 8, SVC_NETMASK, 0xFFFFFFFF))


_DEST_TAILS: dict[tuple[int, int], bytes] = {}


def _dest_tail(fwd_method: int, weight: int) -> bytes:
    """Forwarding method, weight and both thresholds: the same for every real server of
    a sync, so packed once."""
    found = _DEST_TAILS.get((fwd_method, weight))
    if found is None:
        found = _DEST_TAILS[(fwd_method, weight)] = _DEST_REST.pack(
            8, DEST_FWD_METHOD, fwd_method, 8, DEST_WEIGHT, weight,
            8, DEST_U_THRESH, 0, 8, DEST_L_THRESH, 0)
    return found


def dest_attrs(addr: ipaddress.IPv4Address, port: int, *, fwd_method: int | None = None,
               weight: int = 1) -> bytes:
    """A real server; with ``fwd_method`` the full entry that add/set need."""
    key = _DEST_KEY.pack(8, DEST_ADDR, socket.htonl(int(addr)), 6, DEST_PORT,
                         socket.htons(port), 6, DEST_ADDR_FAMILY, socket.AF_INET)
    return key if fwd_method is None else key + _dest_tail(fwd_method, weight)


class Command:
    """One netlink request: an IPVS command (``cmd``, attributes after the generic
    netlink header) or, on a route socket, a message type and its body. ``tolerate``
    lists errnos that mean "already so"; ``flags`` are extra nlmsg flags. The
    description is formatted only when asked (an error message): a full sync makes
    100,000 of these."""

    __slots__ = ("attrs", "cmd", "desc", "flags", "tolerate")

    def __init__(self, cmd: int, attrs: bytes, tolerate: frozenset[int] = frozenset(),
                 desc: tuple[object, ...] = (), flags: int = 0) -> None:
        self.cmd = cmd
        self.attrs = attrs
        self.tolerate = tolerate
        self.desc = desc
        self.flags = flags

    @property
    def what(self) -> str:
        if len(self.desc) == 4:  # (verb, real server address, port, service)
            verb, addr, port, svc = self.desc
            joiner = {"add": "to", "set": "of", "delete": "from"}.get(str(verb), "in")
            return f"{verb} {addr}:{port} {joiner} {svc}"
        return " ".join(map(str, self.desc))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Command) and (self.cmd, self.attrs, self.flags)
                == (other.cmd, other.attrs, other.flags))

    def __hash__(self) -> int:
        return hash((self.cmd, self.attrs, self.flags))

    def __repr__(self) -> str:
        return f"Command({self.what or self.cmd})"


_EEXIST = frozenset({errno.EEXIST})
_GONE_SERVICE = frozenset({errno.ESRCH, errno.ENOENT})  # IPVS: ESRCH, unknown service
_GONE_DEST = frozenset({errno.ENOENT})
_NOTHING = frozenset[int]()


def add_service(svc: ServiceId, scheduler: str) -> Command:
    return Command(CMD_NEW_SERVICE, _nla(ATTR_SERVICE, svc.full_attrs(scheduler)),
                   _EEXIST, ("add service", svc))


def del_service(svc: ServiceId) -> Command:
    return Command(CMD_DEL_SERVICE, svc.service_nla, _GONE_SERVICE, ("delete service", svc))


_DEST_FULL_HDR = _NLA_HDR.pack(4 + _DEST_KEY.size + _DEST_REST.size, ATTR_DEST)
_DEST_KEY_HDR = _NLA_HDR.pack(4 + _DEST_KEY.size, ATTR_DEST)


def _dest_nla(addr: ipaddress.IPv4Address, port: int, fwd_method: int | None) -> bytes:
    head = _DEST_KEY_HDR if fwd_method is None else _DEST_FULL_HDR
    return head + dest_attrs(addr, port, fwd_method=fwd_method)


def add_dest(svc: ServiceId, addr: ipaddress.IPv4Address, port: int, fwd_method: int
             ) -> Command:
    return Command(CMD_NEW_DEST, svc.service_nla + _dest_nla(addr, port, fwd_method),
                   _EEXIST, ("add", addr, port, svc))


def set_dest(svc: ServiceId, addr: ipaddress.IPv4Address, port: int, fwd_method: int
             ) -> Command:
    return Command(CMD_SET_DEST, svc.service_nla + _dest_nla(addr, port, fwd_method),
                   _NOTHING, ("set", addr, port, svc))


def del_dest(svc: ServiceId, addr: ipaddress.IPv4Address, port: int) -> Command:
    return Command(CMD_DEL_DEST, svc.service_nla + _dest_nla(addr, port, None),
                   _GONE_DEST, ("delete", addr, port, svc))


def add_address(index: int, addr: ipaddress.IPv4Address) -> Command:
    """A /32 on interface ``index`` (rtnetlink; for :class:`NetlinkBatch` on a route
    socket)."""
    body = (struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, index)
            + _nla(IFA_LOCAL, addr.packed) + _nla(IFA_ADDRESS, addr.packed))
    return Command(RTM_NEWADDR, body, _EEXIST, ("add address", addr),
                   NLM_F_CREATE | NLM_F_EXCL)


def del_address(index: int, addr: ipaddress.IPv4Address) -> Command:
    body = (struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, index)
            + _nla(IFA_LOCAL, addr.packed) + _nla(IFA_ADDRESS, addr.packed))
    return Command(RTM_DELADDR, body, frozenset({errno.EADDRNOTAVAIL}),
                   ("delete address", addr))


def encode(family: int | None, seq: int, command: Command) -> bytes:
    """The wire form: with a generic-netlink ``family``, the command goes after a genl
    header in a message of that type; without one, ``cmd`` is the message type."""
    flags = NLM_F_REQUEST | NLM_F_ACK | command.flags
    if family is None:
        kind, body = command.cmd, command.attrs
    else:
        kind, body = family, struct.pack("=BBH", command.cmd, 1, 0) + command.attrs
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(offset, length, type, sequence number) of each netlink message in a buffer."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            return
        yield offset, length, kind, seq
        offset += (length + 3) & ~3


def parse_acks(data: bytes) -> Iterator[tuple[int, int]]:
    """(sequence number, errno) of every ack in a buffer (errno 0: success)."""
    for offset, _, kind, seq in messages(data):
        if kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", data, offset + 16)
            yield seq, -error


class NetlinkBatchError(RuntimeError):
    def __init__(self, failures: list[tuple[Command, int]]) -> None:
        self.failures = failures
        shown = "; ".join(f"{c.what}: {os.strerror(code)}" for c, code in failures[:5])
        more = f" (+{len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"the kernel refused {len(failures)} request(s): {shown}{more}")


class NetlinkBatch:
    """Sends requests in batches on its own netlink socket (blocking; call from a worker
    thread): IPVS commands when ``family`` (the IPVS generic-netlink family id) is given,
    else rtnetlink requests."""

    def __init__(self, family: int | None, netns_path: str | None = None) -> None:
        self.family = family
        protocol = NETLINK_ROUTE if family is None else NETLINK_GENERIC
        self.sock = netns.run_in(netns_path, lambda: socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW, protocol))
        self.sock.bind((0, 0))
        for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
                break
            except OSError:
                continue
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        except OSError:
            pass  # older kernels: acks echo the request, BATCH still fits
        self.seq = 0
        self.lock = threading.Lock()

    def run(self, commands: Sequence[Command]) -> int:
        """Run every command, in order; raise :class:`NetlinkBatchError` listing the ones
        the kernel refused (beyond their tolerated errnos). Returns how many ran."""
        failures: list[tuple[Command, int]] = []
        with self.lock:
            for start in range(0, len(commands), BATCH):
                failures += self._batch(commands[start:start + BATCH])
        if failures:
            raise NetlinkBatchError(failures)
        return len(commands)

    def _batch(self, commands: Sequence[Command]) -> list[tuple[Command, int]]:
        pending: dict[int, Command] = {}
        parts = []
        for command in commands:
            self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
            pending[self.seq] = command
            parts.append(encode(self.family, self.seq, command))
        self.sock.sendall(b"".join(parts))
        failures = []
        while pending:
            for seq, code in parse_acks(self.sock.recv(1 << 20)):
                if seq not in pending:
                    continue  # an ack of an earlier, abandoned batch
                command = pending.pop(seq)
                if code and code not in command.tolerate:
                    failures.append((command, code))
        return failures

    def ipv4_addresses(self, index: int) -> set[ipaddress.IPv4Address]:
        """The IPv4 addresses of interface ``index`` (rtnetlink sockets only). pyroute2
        parses each address message in Python -- seconds for the 10,000 VIPs of a big
        node -- where this reads just the two fields it needs."""
        assert self.family is None
        found: set[ipaddress.IPv4Address] = set()
        with self.lock:
            self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
            seq = self.seq
            body = struct.pack("=BBBBI", socket.AF_INET, 0, 0, 0, index)
            self.sock.sendall(struct.pack("=IHHII", 16 + len(body), RTM_GETADDR,
                                          NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
            while True:
                data = self.sock.recv(1 << 20)
                for offset, length, kind, mseq in messages(data):
                    if mseq != seq:
                        continue
                    if kind == NLMSG_DONE:
                        return found
                    if kind == NLMSG_ERROR:
                        (error,) = struct.unpack_from("=i", data, offset + 16)
                        if error:
                            raise OSError(-error, os.strerror(-error))
                    elif kind == RTM_NEWADDR:
                        _add_local(found, data, offset, length, index)

    def close(self) -> None:
        self.sock.close()


def _add_local(found: set[ipaddress.IPv4Address], data: bytes, offset: int, length: int,
               index: int) -> None:
    """Add the IFA_LOCAL of one RTM_NEWADDR message if it is for interface ``index``
    (older kernels dump every interface's addresses whatever the request says)."""
    family, _, _, _, ifindex = struct.unpack_from("=BBBBI", data, offset + 16)
    if family != socket.AF_INET or ifindex != index:
        return
    pos, end = offset + 24, offset + length
    while pos + 4 <= end:
        size, kind = struct.unpack_from("=HH", data, pos)
        if size < 4:
            return
        if kind == IFA_LOCAL and size == 8:
            found.add(ipaddress.IPv4Address(data[pos + 4:pos + 8]))
            return
        pos += (size + 3) & ~3


class ListedService(NamedTuple):
    """One service of ``/proc/net/ip_vs``. Addresses stay integers: a full listing has
    100,000 real servers, and ipaddress objects for each cost more than the read."""

    protocol: str  # "TCP", "UDP", "SCTP" or "FWM"
    addr: int  # 0 for a fwmark service
    port: int
    fwmark: int
    scheduler: str
    dests: list[tuple[int, int, str, int]]  # address, port, forwarding name, weight


def parse_proc_ip_vs(text: str) -> list[ListedService]:
    """The IPv4 services of ``/proc/net/ip_vs`` (hex addresses in network order; lines
    of IPv6 services and real servers, "[...]", are skipped)."""
    out: list[ListedService] = []
    dests: list[tuple[int, int, str, int]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        first = parts[0]
        if first == "->":
            endpoint = parts[1]
            if len(parts) >= 4 and len(endpoint) == 13 and endpoint[8] == ":":
                dests.append((int(endpoint[:8], 16), int(endpoint[9:], 16), parts[2],
                              int(parts[3])))
            continue
        if first == "FWM":
            dests = []
            out.append(ListedService("FWM", 0, 0, int(parts[1], 16), parts[2], dests))
        elif first in ("TCP", "UDP", "SCTP"):
            dests = []
            endpoint = parts[1]
            if len(endpoint) == 13 and endpoint[8] == ":":
                out.append(ListedService(first, int(endpoint[:8], 16), int(endpoint[9:], 16),
                                         0, parts[2], dests))
        # header lines ("IP Virtual Server ...", "Prot ...") fall through
    return out


def read_proc_ip_vs(netns_path: str | None = None) -> str:
    """The text of /proc/net/ip_vs in a namespace (blocking; from a worker thread).
    ``thread-self``: /proc/net would show the process's namespace, not the thread's."""
    return netns.run_in(netns_path, Path("/proc/thread-self/net/ip_vs").read_text)
