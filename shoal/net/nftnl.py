"""Set elements of the ``ip shoal`` table as raw nf_tables netlink: one batch, one sendmsg.

Why not nft text: a full sync of 10,000 services x 10 endpoints is ~110,000 set elements,
and nft spends ~0.5 s of CPU parsing their text before the kernel sees a byte. Why not
pyroute2's nftables layer: its generic attribute encoder builds a Python object tree per
element -- measured 44 us of CPU each (~4.8 s for 110,000), against ~0.4 us here. The
elements of Shoal's maps have a handful of fixed layouts, so each one is a few ``bytes``
concatenations of precomputed headers (:data:`LAYOUTS`), and every message of a sync
goes into one nfnetlink batch (``NFNL_MSG_BATCH_BEGIN`` .. ``END``): the kernel applies
the whole batch as ONE transaction or none of it, which keeps a re-sync atomic for
traffic.

Wire format, as ``nft --debug=netlink,mnl`` sends it (uapi ``linux/netfilter/nf_tables.h``):
a concatenated key is each field padded to 4 bytes; addresses and ports in network order,
an ``inet_proto`` one byte, a ``numgen`` index a host-order u32; a map's data is the same
kind of value, or for a verdict map a nested verdict code (goto: -4) and chain name.
Elements go in NFTA_SET_ELEM_LIST_ELEMENTS, whose length is a u16, so a set's elements
are split across messages of at most :data:`MAX_ELEMENTS_BYTES`.

Acks: every message asks for one (NLM_F_ACK) and they are matched by sequence number;
``NETLINK_CAP_ACK`` keeps an error from echoing its 64 KB request, and ``NETLINK_EXT_ACK``
makes the kernel point at the element it refused, which :class:`NftError` names.

Reading back (drift repair) is a netlink dump of a set's elements, compared as bytes with
what the model encodes: no text on either side; and :meth:`NftNetlink.table_state`, the
table's chains (with their hook, priority and policy), rules and set declarations as the
kernel dumps them, for comparing with a reference table the same way.
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

from shoal.net import netns
from shoal.net.nft import NftError

# uapi numbers (linux/netlink.h, linux/netfilter/nfnetlink.h, nf_tables.h): stable ABI,
# written out so the hot path is plain ints.
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_CAP_ACK = 10
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_ACK_TLVS = 0x200  # on an error ack: TLVs follow
NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS = 1, 2
NLA_F_NESTED = 0x8000
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NFT_MSG_GETCHAIN, NFT_MSG_DELCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETSET = 4, 5, 7, 10
NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 2, 4
NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY, NFTA_CHAIN_TYPE, NFTA_CHAIN_FLAGS = 4, 5, 7, 10
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_SET_NAME, NFTA_SET_FLAGS = 2, 3
# What a set was declared with (flags, key and data types and lengths, timeout, typeof
# user data, object type, expressions): compared. Not its identity (table, name, handle,
# id), nor what the kernel derives (the backend it picked, and on 6.x the element count).
SET_DECLARATION = frozenset({3, 4, 5, 6, 7, 11, 13, 15, 17, 18})
NFT_SET_ANONYMOUS = 0x1
HOOK_NAMES = {0: "prerouting", 1: "input", 2: "forward", 3: "output", 4: "postrouting"}
POLICY_NAMES = {0: "drop", 1: "accept"}
NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM, NFT_MSG_DELSETELEM = 12, 13, 14
NFTA_CHAIN_NAME = 3
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA = 1, 2
NFTA_DATA_VALUE, NFTA_DATA_VERDICT = 1, 2
NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 1, 2
NFT_GOTO = -4

# Elements per message: NFTA_SET_ELEM_LIST_ELEMENTS carries a u16 length.
MAX_ELEMENTS_BYTES = 60_000
_HDR = struct.Struct("=IHHII")  # nlmsghdr
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big-endian)
_NLA = struct.Struct("=HH")


def nla(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


def nest(kind: int, payload: bytes) -> bytes:
    return nla(kind | NLA_F_NESTED, payload)


def _value_head(size: int) -> bytes:
    """Header of a nested NFTA_DATA_VALUE of ``size`` bytes (size a multiple of 4)."""
    return _NLA.pack(8 + size, NFTA_SET_ELEM_KEY | NLA_F_NESTED) + _NLA.pack(4 + size,
                                                                           NFTA_DATA_VALUE)


# ---- field encodings (each padded to 4 bytes) ------------------------------------------

_PORTS: dict[int, bytes] = {}
_INDEXES = [struct.pack("=I", i) for i in range(256)]
PROTO_BYTES = {"tcp": bytes([socket.IPPROTO_TCP, 0, 0, 0]),
               "udp": bytes([socket.IPPROTO_UDP, 0, 0, 0])}
PROTO_NAMES = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp"}


def port_bytes(port: int) -> bytes:
    """A port as a concatenation field: big-endian u16 and two bytes of padding."""
    found = _PORTS.get(port)
    if found is None:
        found = _PORTS[port] = struct.pack("!H2x", port)
    return found


def index_bytes(index: int) -> bytes:
    """A ``numgen`` result as a key field: host-order u32."""
    return _INDEXES[index] if index < 256 else struct.pack("=I", index)


# ---- element layouts ---------------------------------------------------------------------

FieldKind = str  # "addr", "proto", "port", "index"


@dataclass(frozen=True)
class Layout:
    """The key (and data) fields of one set's elements: their encoding headers, and how
    to read an element back as text (error messages, repair reports, tests)."""

    key: tuple[FieldKind, ...]
    data: tuple[FieldKind, ...] | None  # None: a set; () : a verdict map
    head: bytes = field(init=False)  # list-element header + key headers, before the key
    mid: bytes = field(init=False)  # data headers, between key and data

    def __post_init__(self) -> None:
        klen = 4 * len(self.key)
        key_part = 4 + 4 + klen  # SET_ELEM_KEY nest + DATA_VALUE
        if self.data is None:
            mid = b""
            total = 4 + key_part
        elif not self.data:
            mid = b""  # verdict: built per chain name, see verdict_data()
            total = 0
        else:
            dlen = 4 * len(self.data)
            mid = (_NLA.pack(8 + dlen, NFTA_SET_ELEM_DATA | NLA_F_NESTED)
                   + _NLA.pack(4 + dlen, NFTA_DATA_VALUE))
            total = 4 + key_part + len(mid) + dlen
        head = _value_head(klen)
        object.__setattr__(self, "head", _NLA.pack(total, NFTA_LIST_ELEM | NLA_F_NESTED)
                           + head if total else head)
        object.__setattr__(self, "mid", mid)

    def describe(self, key: bytes, data: bytes | None = None) -> str:
        text = " . ".join(_field_text(k, key[4 * i:4 * i + 4]) for i, k in enumerate(self.key))
        if data is None or self.data is None:
            return text
        if not self.data:
            return f"{text} : {describe_verdict(data)}"
        value = " . ".join(_field_text(k, data[4 * i:4 * i + 4])
                           for i, k in enumerate(self.data))
        return f"{text} : {value}"


def _field_text(kind: FieldKind, raw: bytes) -> str:
    if kind == "addr":
        return str(ipaddress.IPv4Address(raw))
    if kind == "proto":
        return PROTO_NAMES.get(raw[0], str(raw[0]))
    if kind == "port":
        return str(struct.unpack("!H", raw[:2])[0])
    return str(struct.unpack("=I", raw)[0])


# Shoal's sets, by name prefix (lb_nftables.render_skeleton declares them).
LAYOUTS: dict[str, Layout] = {
    "svc": Layout(("addr", "proto", "port"), ()),
    "svca": Layout(("addr", "proto"), ()),
    "np": Layout(("proto", "port"), ()),
    "vips": Layout(("addr",), None),
    "be": Layout(("addr", "port", "index"), ("addr", "port")),
    "va": Layout(("addr", "index"), ("addr",)),
    "np_": Layout(("port", "index"), ("addr", "port")),
}


def layout_of(set_name: str) -> Layout:
    if set_name.startswith("np_"):
        return LAYOUTS["np_"]
    return LAYOUTS[set_name.split("_")[0]]


_VERDICT_DATA: dict[str, bytes] = {}


def verdict_data(chain: str) -> bytes:
    """The NFTA_SET_ELEM_DATA of ``goto chain`` (cached: a few dozen chains)."""
    found = _VERDICT_DATA.get(chain)
    if found is None:
        verdict = (nla(NFTA_VERDICT_CODE, struct.pack("!i", NFT_GOTO))
                   + nla(NFTA_VERDICT_CHAIN, chain.encode() + b"\0"))
        found = _VERDICT_DATA[chain] = nest(NFTA_SET_ELEM_DATA, nest(NFTA_DATA_VERDICT,
                                                                     verdict))
    return found


def describe_verdict(data: bytes) -> str:
    """``goto chain`` from the payload of a verdict NFTA_SET_ELEM_DATA (or its whole)."""
    attrs = dict(_attrs(data))
    if NFTA_SET_ELEM_DATA in attrs:
        attrs = dict(_attrs(attrs[NFTA_SET_ELEM_DATA]))
    verdict = dict(_attrs(attrs.get(NFTA_DATA_VERDICT, b"")))
    code = struct.unpack("!i", verdict.get(NFTA_VERDICT_CODE, b"\0\0\0\0"))[0]
    chain = verdict.get(NFTA_VERDICT_CHAIN, b"").rstrip(b"\0").decode()
    name = {NFT_GOTO: "goto", -3: "jump", 1: "accept", 0: "drop"}.get(code, str(code))
    return f"{name} {chain}".strip()


def element(layout: Layout, key: bytes, data: bytes | None = None) -> bytes:
    """One NFTA_LIST_ELEM: for a data map ``data`` is the value, for a verdict map the
    whole NFTA_SET_ELEM_DATA (:func:`verdict_data`), for a set None. The fast paths in
    lb_nftables concatenate ``layout.head``/``layout.mid`` themselves."""
    if layout.data is None:
        return layout.head + key
    if not layout.data:
        assert data is not None
        body = layout.head + key + data
        return _NLA.pack(4 + len(body), NFTA_LIST_ELEM | NLA_F_NESTED) + body
    assert data is not None
    return layout.head + key + layout.mid + data


def split_element(raw: bytes) -> tuple[bytes, bytes | None]:
    """(key value, data) of one NFTA_LIST_ELEM payload as the kernel dumps it: data is the
    value of a data map, the whole NFTA_SET_ELEM_DATA of a verdict map, None for a set --
    the same bytes :func:`element` puts there, so model and kernel compare as bytes."""
    key = b""
    data: bytes | None = None
    for kind, payload in _attrs(raw):
        if kind == NFTA_SET_ELEM_KEY:
            key = dict(_attrs(payload)).get(NFTA_DATA_VALUE, b"")
        elif kind == NFTA_SET_ELEM_DATA:
            inner = dict(_attrs(payload))
            if NFTA_DATA_VALUE in inner:
                data = inner[NFTA_DATA_VALUE]
            else:  # re-nested with NLA_F_NESTED, which kernel dumps leave out
                data = nest(NFTA_SET_ELEM_DATA,
                            nest(NFTA_DATA_VERDICT, inner.get(NFTA_DATA_VERDICT, b"")))
    return key, data


def _read_elements(buf: bytes, out: list[tuple[bytes, bytes | None]]) -> None:
    """:func:`split_element` of every NFTA_LIST_ELEM in ``buf``, inline: an idle repair
    of 10,000 services reads 110,000 of them, and the generic attribute walk (a slice
    and a dict per level) was most of its CPU."""
    unpack = _NLA.unpack_from
    pos, end = 0, len(buf)
    while pos + 4 <= end:
        size, kind = unpack(buf, pos)
        if size < 4:
            return
        if kind & 0x3FFF == NFTA_LIST_ELEM:
            p, stop = pos + 4, pos + size
            key = b""
            data: bytes | None = None
            while p + 4 <= stop:
                asize, akind = unpack(buf, p)
                if asize < 8:
                    break
                inner_size, inner_kind = unpack(buf, p + 4)
                value = buf[p + 8:p + 4 + inner_size]
                if akind & 0x3FFF == NFTA_SET_ELEM_KEY:
                    key = value
                elif akind & 0x3FFF == NFTA_SET_ELEM_DATA:
                    # A verdict comes back without NLA_F_NESTED: re-nested, as encoded.
                    data = value if inner_kind & 0x3FFF == NFTA_DATA_VALUE else nest(
                        NFTA_SET_ELEM_DATA, nest(NFTA_DATA_VERDICT, value))
                p += (asize + 3) & ~3
            out.append((key, data))
        pos += (size + 3) & ~3


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type without flags, payload) of each attribute in ``data``."""
    pos, end = 0, len(data)
    while pos + 4 <= end:
        size, kind = _NLA.unpack_from(data, pos)
        if size < 4:
            return
        yield kind & 0x3FFF, data[pos + 4:pos + size]
        pos += (size + 3) & ~3


# ---- batches -----------------------------------------------------------------------------

@dataclass
class SetOp:
    """Add (``"add"``), delete (``"delete"``) these elements of one set, or flush it
    (``"flush"``, no elements). One more verb rides along because it belongs in the same
    transaction: ``"delete-chain"`` deletes the chain ``set_name`` with its rules, once
    the batch's earlier deletions left nothing referring to it (:meth:`delete_chain`)."""

    verb: str
    set_name: str
    elements: Sequence[bytes] = ()

    @classmethod
    def delete_chain(cls, chain: str) -> SetOp:
        return cls("delete-chain", chain)


def _nfgen(family: int, res_id: int = 0) -> bytes:
    return _NFGEN.pack(family, 0, socket.htons(res_id))


@dataclass
class _Sent:
    op: SetOp
    first: int  # index in op.elements of this message's first element
    offsets: list[int]  # byte offset of each element from the message's start


@dataclass(frozen=True)
class ChainDecl:
    """What makes a chain a base chain, as the kernel dumps it: None fields for a regular
    chain. Compared whole; :meth:`describe` is nft's syntax, for repair reports."""

    type: str | None = None
    hook: int | None = None
    priority: int | None = None
    policy: int | None = None

    def describe(self) -> str:
        if self.hook is None:
            return "a regular chain"
        hook = HOOK_NAMES.get(self.hook, str(self.hook))
        policy = POLICY_NAMES.get(self.policy or 0, str(self.policy))
        return f"type {self.type} hook {hook} priority {self.priority} policy {policy}"


@dataclass(frozen=True)
class TableState:
    """One table as the kernel holds it, elements left out: each chain's declaration and
    rules (expressions only: handles and positions change on every rewrite) and each
    named set's declaration (the attributes in :data:`SET_DECLARATION`, as bytes)."""

    chains: dict[str, ChainDecl]
    rules: dict[str, list[bytes]]
    sets: dict[str, bytes]


def _chain_decl(attrs: dict[int, bytes]) -> ChainDecl:
    if NFTA_CHAIN_HOOK not in attrs:
        return ChainDecl()
    hook = dict(_attrs(attrs[NFTA_CHAIN_HOOK]))
    policy = attrs.get(NFTA_CHAIN_POLICY)
    return ChainDecl(
        type=attrs.get(NFTA_CHAIN_TYPE, b"").rstrip(b"\0").decode() or None,
        hook=struct.unpack("!I", hook[NFTA_HOOK_HOOKNUM])[0]
        if NFTA_HOOK_HOOKNUM in hook else None,
        priority=struct.unpack("!i", hook[NFTA_HOOK_PRIORITY])[0]
        if NFTA_HOOK_PRIORITY in hook else None,
        policy=struct.unpack("!I", policy)[0] if policy is not None else None)


def _set_decl(payload: bytes) -> tuple[str, bytes] | None:
    """(name, declaration bytes) of a dumped set; None for an anonymous one (it belongs
    to the rule that uses it and goes with that rule)."""
    name = ""
    decl: list[bytes] = []
    for kind, value in _attrs(payload):
        if kind == NFTA_SET_NAME:
            name = value.rstrip(b"\0").decode()
        elif kind == NFTA_SET_FLAGS and struct.unpack("!I", value[:4])[0] & NFT_SET_ANONYMOUS:
            return None
        if kind in SET_DECLARATION:
            decl.append(nla(kind, value))
    return name, b"".join(decl)


class NftNetlink:
    """One nf_tables netlink socket in a namespace (blocking: call from a worker thread).
    :meth:`commit` sends set-element operations as one transaction."""

    def __init__(self, netns_path: str | None = None, table: str = "shoal",
                 family: int = socket.AF_INET) -> None:
        self.table = table
        self.family = family
        self._table_attr = nla(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
        self.sock = netns.run_in(netns_path, lambda: socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))
        self.sock.bind((0, 0))
        # A full sync is one ~5 MB sendmsg: the send buffer must hold it whole.
        for forced, plain, size in ((SO_SNDBUFFORCE, socket.SO_SNDBUF, 64 << 20),
                                    (SO_RCVBUFFORCE, socket.SO_RCVBUF, 8 << 20)):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, forced, size)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, plain, size)
        for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            try:
                self.sock.setsockopt(SOL_NETLINK, option, 1)
            except OSError:
                pass  # older kernels: bigger acks, and errors without the element
        self.seq = 0
        self.lock = threading.Lock()
        self.messages_sent = 0  # for tests and the bench: how many requests went out

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        return self.seq

    # ---- writing ---------------------------------------------------------------------

    def commit(self, ops: Sequence[SetOp]) -> None:
        """Apply every operation, in order, as one transaction; on any refusal nothing
        is applied and :class:`NftError` names the first refused element."""
        if not ops:
            return
        with self.lock:
            parts: list[bytes] = []
            pending: dict[int, _Sent] = {}
            begin = self._next_seq()
            parts.append(_HDR.pack(20, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin, 0)
                         + _nfgen(socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES))
            for op in ops:
                self._encode(op, parts, pending)
            parts.append(_HDR.pack(20, NFNL_MSG_BATCH_END, NLM_F_REQUEST,
                                   self._next_seq(), 0)
                         + _nfgen(socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES))
            batch = b"".join(parts)
            try:
                self.sock.sendall(batch)
            except OSError as exc:
                raise NftError(
                    f"sending a {len(batch)}-byte nf_tables batch failed ({exc}); nothing "
                    f"was changed. The send buffer is set with SO_SNDBUFFORCE, which needs "
                    f"CAP_NET_ADMIN; without it net.core.wmem_max must exceed the batch"
                ) from exc
            self.messages_sent += len(pending)
            failures = self._collect(begin, pending)
        if failures:
            raise NftError(f"nf_tables refused the batch ({len(failures)} message(s)); "
                           f"nothing was changed: {'; '.join(failures[:3])}")

    def _encode(self, op: SetOp, parts: list[bytes], pending: dict[int, _Sent]) -> None:
        if op.verb == "delete-chain":
            body = (_nfgen(self.family) + nla(1, self.table.encode() + b"\0")
                    + nla(NFTA_CHAIN_NAME, op.set_name.encode() + b"\0"))
            seq = self._next_seq()
            pending[seq] = _Sent(op, 0, [])
            parts.append(_HDR.pack(16 + len(body), (NFNL_SUBSYS_NFTABLES << 8)
                                   | NFT_MSG_DELCHAIN, NLM_F_REQUEST | NLM_F_ACK, seq, 0)
                         + body)
            return
        kind = {"add": NFT_MSG_NEWSETELEM, "delete": NFT_MSG_DELSETELEM,
                "flush": NFT_MSG_DELSETELEM}[op.verb]
        msg_type = (NFNL_SUBSYS_NFTABLES << 8) | kind
        head = (_nfgen(self.family) + self._table_attr
                + nla(NFTA_SET_ELEM_LIST_SET, op.set_name.encode() + b"\0"))
        if op.verb == "flush":
            seq = self._next_seq()
            pending[seq] = _Sent(op, 0, [])
            parts.append(_HDR.pack(16 + len(head), msg_type, NLM_F_REQUEST | NLM_F_ACK,
                                   seq, 0) + head)
            return
        elements = op.elements
        start = 0
        while start < len(elements):
            size = 0
            stop = start
            while stop < len(elements) and size + len(elements[stop]) <= MAX_ELEMENTS_BYTES:
                size += len(elements[stop])
                stop += 1
            if stop == start:
                raise NftError(f"element {start} of set {op.set_name} is too big")
            chunk = elements[start:stop]
            seq = self._next_seq()
            base = 16 + len(head) + 4
            offsets = []
            pos = base
            for item in chunk:
                offsets.append(pos)
                pos += len(item)
            pending[seq] = _Sent(op, start, offsets)
            parts.append(_HDR.pack(base + size, msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, 0)
                         + head + _NLA.pack(4 + size, NFTA_SET_ELEM_LIST_ELEMENTS
                                            | NLA_F_NESTED))
            parts.extend(chunk)
            start = stop

    def _collect(self, begin: int, pending: dict[int, _Sent]) -> list[str]:
        """Read acks until every message has one; describe the refusals."""
        failures: list[str] = []
        while pending:
            data = self.sock.recv(1 << 20)
            for offset, length, kind, seq, _ in _messages(data):
                if kind != NLMSG_ERROR:
                    continue
                code, bad = _error_of(data, offset, length)
                if seq == begin and code:
                    # The commit itself failed (or the batch was malformed).
                    failures.append(f"commit: {os.strerror(code)}")
                    pending.clear()
                    break
                sent = pending.pop(seq, None)
                if sent is None or not code:
                    continue
                failures.append(self._describe_failure(sent, code, bad))
        return failures

    def _describe_failure(self, sent: _Sent, code: int, bad: int | None) -> str:
        op = sent.op
        where = {"add": f"adding to set {op.set_name}",
                 "delete": f"deleting from set {op.set_name}",
                 "flush": f"flushing set {op.set_name}",
                 "delete-chain": f"deleting chain {op.set_name}"}[op.verb]
        if bad is not None and bad in sent.offsets:
            index = sent.first + sent.offsets.index(bad)
            try:
                text = describe_element(op.set_name, op.elements[index])
            except (KeyError, ValueError, struct.error):
                text = f"#{index}"
            hint = " (its chain does not exist)" if code == errno.ENOENT else ""
            return f"{where} element {{ {text} }}: {os.strerror(code)}{hint}"
        if code == errno.ENOENT:
            return f"{where}: {os.strerror(code)} (table ip {self.table} or the set is missing)"
        return f"{where}: {os.strerror(code)}"

    # ---- reading ---------------------------------------------------------------------

    def set_elements(self, set_name: str) -> list[tuple[bytes, bytes | None]]:
        """Every element of a set as (key, data) bytes (see :func:`split_element`)."""
        body = (_nfgen(self.family) + self._table_attr
                + nla(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0"))
        out: list[tuple[bytes, bytes | None]] = []
        for payload in self._dump((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM, body):
            for kind, value in _attrs(payload[4:]):
                if kind == NFTA_SET_ELEM_LIST_ELEMENTS:
                    _read_elements(value, out)
        return out

    def chains(self) -> set[str]:
        """Names of the table's chains (a dump of chains only: no elements)."""
        body = _nfgen(self.family) + nla(1, self.table.encode() + b"\0")
        names: set[str] = set()
        for payload in self._dump((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN, body):
            attrs = dict(_attrs(payload[4:]))
            table = attrs.get(1, b"").rstrip(b"\0").decode()
            if table == self.table and NFTA_CHAIN_NAME in attrs:
                names.add(attrs[NFTA_CHAIN_NAME].rstrip(b"\0").decode())
        return names

    def table_state(self) -> TableState | None:
        """The table's chains, rules and set declarations (see :class:`TableState`);
        None when the table does not exist. Three small dumps: no set elements."""
        body = _nfgen(self.family) + nla(1, self.table.encode() + b"\0")
        chains: dict[str, ChainDecl] = {}
        rules: dict[str, list[bytes]] = {}
        sets: dict[str, bytes] = {}
        try:
            for payload in self._dump((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN, body):
                attrs = dict(_attrs(payload[4:]))
                if attrs.get(1, b"").rstrip(b"\0").decode() != self.table:
                    continue
                name = attrs.get(NFTA_CHAIN_NAME, b"").rstrip(b"\0").decode()
                chains[name] = _chain_decl(attrs)
                rules[name] = []
            for payload in self._dump((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE, body):
                attrs = dict(_attrs(payload[4:]))
                chain = attrs.get(NFTA_RULE_CHAIN, b"").rstrip(b"\0").decode()
                rules.setdefault(chain, []).append(attrs.get(NFTA_RULE_EXPRESSIONS, b""))
            for payload in self._dump((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSET, body):
                found = _set_decl(payload[4:])
                if found is not None:
                    sets[found[0]] = found[1]
        except MissingError:
            return None
        return TableState(chains, rules, sets)

    def _dump(self, msg_type: int, body: bytes) -> Iterator[bytes]:
        with self.lock:
            seq = self._next_seq()
            self.sock.sendall(_HDR.pack(16 + len(body), msg_type,
                                        NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
            done = False
            while not done:
                data = self.sock.recv(1 << 20)
                for offset, length, kind, mseq, _ in _messages(data):
                    if mseq != seq:
                        continue
                    if kind == NLMSG_DONE:
                        done = True
                        break
                    if kind == NLMSG_ERROR:
                        code, _ = _error_of(data, offset, length)
                        if code == errno.ENOENT:
                            raise MissingError(os.strerror(code))
                        if code:
                            raise NftError(f"nf_tables dump: {os.strerror(code)}")
                        continue
                    yield data[offset + 16:offset + length]


class MissingError(NftError):
    """The table or set being read does not exist."""


def describe_element(set_name: str, raw: bytes) -> str:
    """An encoded NFTA_LIST_ELEM (as :func:`element` makes it) in nft's syntax."""
    size, _ = _NLA.unpack_from(raw, 0)
    key, data = split_element(raw[4:size])
    return layout_of(set_name).describe(key, data)


def _messages(data: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(offset, length, type, sequence number, flags) of each netlink message."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind, flags, seq, _ = _HDR.unpack_from(data, offset)
        if length < 16:
            return
        yield offset, length, kind, seq, flags
        offset += (length + 3) & ~3


def _error_of(data: bytes, offset: int, length: int) -> tuple[int, int | None]:
    """(errno, offset of the refused attribute in its request or None) of an ack."""
    (error,) = struct.unpack_from("=i", data, offset + 16)
    _, _, flags, _, _ = _HDR.unpack_from(data, offset)
    bad = None
    if error and flags & NLM_F_ACK_TLVS:
        # nlmsgerr: error, then the request's header (capped: header only), then TLVs.
        inner_len = _HDR.unpack_from(data, offset + 20)[0]
        start = offset + 20 + (16 if flags & 0x100 else inner_len)
        start = (start + 3) & ~3
        for kind, payload in _attrs(data[start:offset + length]):
            if kind == NLMSGERR_ATTR_OFFS and len(payload) >= 4:
                bad = struct.unpack("=I", payload[:4])[0]
    return -error, bad


