"""The project's own small etcd interface, implemented with grpc and aetcd's stubs.

Everything above uses these few calls (range, txn, watch stream, leases, compact, the
member and status calls the cluster verbs need, and the alarm, size and defragment calls
of ``shoal.store.maintenance``), so the client library can be swapped by
rewriting this one module. Raw protobuf messages are used instead of aetcd's per-key
wrapper objects: listing or watching tens of thousands of keys is dominated by per-item
Python overhead, and the raw messages avoid a copy per key.

Endpoints. An etcd address is a comma-separated list of endpoints
(``http://10.0.0.1:2379,http://10.0.0.2:2379``). One gRPC channel spans them all with
gRPC's ``round_robin`` balancer, as etcd's own Go client does: every endpoint keeps a
connection, each call goes to a ready one, and a member that dies drops out of the
rotation as soon as its connection breaks (a SIGKILLed process: at once). Calls in flight
on it fail with UNAVAILABLE, which this module turns into the store's retryable
``UnavailableError``; the caller's next call lands on a live member. Watches carry etcd's
``hasleader`` metadata, so a member cut off from its cluster's leader ends them instead
of leaving them silent, and ``shoal.store.watch`` resumes them on another member.

Members. The endpoints a process was given are only where it starts: a cluster grows
after the first manager's processes started (they knew one member) and shrinks on a
demotion. As etcd's Go client does with its AutoSyncInterval, a connected client asks
``member_list()`` for the members' client URLs at once, every ``SYNC_INTERVAL`` and
soon after a call fails for want of a member, and when the set changed it moves to it:
a new channel is built and proved to answer, the stubs are swapped (calls started from
then on use it), and the old channel is closed after ``RETIRE_GRACE``, so calls in
flight on it finish; a watch still open on it is then cut and resumed on the new one by
``shoal.store.watch``, from the revision it had reached. Learners and members not yet
started (no client URLs) are skipped, and an empty or failed answer keeps the current
set. Every member's server certificate names ``etcd.shoal``, so a member learned this
way is trusted like the ones given. etcd answers MemberList to any authenticated user,
so a worker's least-privilege certificate learns the members too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
import typing
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aetcd.rpc as rpc
import aetcd.rpc.auth_pb2 as auth_pb2
import grpc
import structlog

from shoal.pki import ca as pki_ca
from shoal.pki import certs
from shoal.pki.bundle import Bundle
from shoal.pki.certs import ETCD_SERVER_NAME
from shoal.store import errors

log = structlog.get_logger("shoal.store.etcd")

# Per-call deadline. Long enough for a 128-operation transaction under load, short
# enough that a dead etcd turns into a clear error instead of a hang.
CALL_TIMEOUT = 10.0

# Per-call deadline when the client knows several members. A write (or linearizable
# read) that a follower forwarded to a leader which then died is silently lost, and
# etcd answers it only after its own request timeout (5 s + 2 election timeouts: 7 s
# with etcd's defaults, 6 s with Shoal's). Measured here: the first write after
# SIGKILLing the leader of a 3-member cluster waited 7.0 s. With this deadline the
# caller gets the retryable UnavailableError instead, and its retry lands after the
# election (0.5-1 s with Shoal's timings). The store's retries give their first attempt
# less (shoal.store.retry, 1 s); this caps the later ones, whose job is to let a slow
# but live etcd answer, and the calls made without retries (docs/ha.md has the numbers).
FAILOVER_CALL_TIMEOUT = 2.0

# How often a connected client re-reads the member list (see the module doc). A member
# added is used within this; one call is cheap (etcd answers it from its own copy of the
# membership, no raft round), and a thousand agents asking every 10 s is 100 calls/s.
SYNC_INTERVAL = 10.0
# The shortest gap between two member-list reads: a burst of failed calls asks once.
SYNC_MIN_GAP = 1.0
# How long a replaced channel stays open for the calls still running on it: the longest
# deadline a call gets, plus a margin.
RETIRE_GRACE = CALL_TIMEOUT + 1.0
#: Seconds between two renewals asked for by ``reconnect`` (an agent serving many nodes
#: hears of each lapsed lease separately).
RECONNECT_MIN_GAP = 2.0


# KV and RawEvent are NamedTuples, not frozen dataclasses: a watcher builds one per
# event, and a frozen dataclass's __init__ (object.__setattr__ per field) cost 3x as much.
class KV(typing.NamedTuple):
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


class RawEvent(typing.NamedTuple):
    """One watch event. ``deleted`` events carry the key and the revision only."""

    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int
    deleted: bool


class CompactedError(errors.StoreError):
    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"revision compacted up to {compact_revision}")


_READ = auth_pb2.Permission.Type.READ
_WRITE = auth_pb2.Permission.Type.WRITE
_READWRITE = auth_pb2.Permission.Type.READWRITE

_DELETE = rpc.Event.EventType.DELETE  # the enum wrapper's lookup is slow per event


def prefix_end(prefix: bytes) -> bytes:
    """The exclusive end of the key range that starts with ``prefix``."""
    as_list = bytearray(prefix)
    for i in range(len(as_list) - 1, -1, -1):
        if as_list[i] < 0xFF:
            as_list[i] += 1
            return bytes(as_list[: i + 1])
    return b"\0"


class Endpoint(typing.NamedTuple):
    """One etcd client URL, split: ``scheme`` is ``http`` or ``https``."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_endpoint(url: str) -> Endpoint:
    """One endpoint (``http://HOST:PORT``, ``https://...``, or bare ``HOST[:PORT]``)."""
    text = url.strip()
    parsed = urllib.parse.urlparse(text if "://" in text else "http://" + text)
    try:
        port = parsed.port or 2379
    except ValueError:
        port = 0
    if parsed.scheme not in ("http", "https") or not parsed.hostname or not port \
            or parsed.path not in ("", "/"):
        raise ValueError(f'invalid etcd URL "{text}": expected http://HOST:PORT or '
                         "https://HOST:PORT")
    return Endpoint(parsed.scheme, parsed.hostname, port)


def parse_endpoints(urls: str | Sequence[str]) -> list[Endpoint]:
    """Every endpoint of a comma-separated list (or a sequence of URLs), in order.

    All must share one scheme: a cluster serves clients either over TLS or not.
    """
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    endpoints = [parse_endpoint(item) for item in items if item.strip()]
    if not endpoints:
        raise ValueError("no etcd endpoint given: expected http://HOST:PORT[,http://HOST:PORT...]")
    schemes = {ep.scheme for ep in endpoints}
    if len(schemes) > 1:
        raise ValueError(f'etcd endpoints "{",".join(ep.url for ep in endpoints)}" mix http and '
                         "https: list the cluster's endpoints with one scheme")
    return endpoints


def parse_url(url: str) -> tuple[str, int]:
    """The host and port of the first endpoint of ``url`` (a list is accepted)."""
    first = parse_endpoints(url)[0]
    return first.host, first.port


def _resolve(ep: Endpoint) -> tuple[int, str]:
    """(address family, address) of an endpoint's host, for a multi-address target."""
    try:
        ipaddress.ip_address(ep.host)
        return (socket.AF_INET6 if ":" in ep.host else socket.AF_INET), ep.host
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(ep.host, ep.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ValueError(f'etcd endpoint "{ep.url}": cannot resolve {ep.host} ({exc})') from None
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])


def grpc_target(endpoints: Sequence[Endpoint]) -> str:
    """The gRPC target naming every endpoint.

    One endpoint keeps its host name (gRPC resolves it, as before); several become one
    ``ipv4:``/``ipv6:`` address list, which gRPC's own resolvers accept only as addresses.
    """
    if len(endpoints) == 1:
        ep = endpoints[0]
        return f"[{ep.host}]:{ep.port}" if ":" in ep.host else f"{ep.host}:{ep.port}"
    resolved = [(_resolve(ep), ep) for ep in endpoints]
    families = {family for (family, _), _ in resolved}
    if families == {socket.AF_INET}:
        return "ipv4:" + ",".join(f"{addr}:{ep.port}" for (_, addr), ep in resolved)
    if families == {socket.AF_INET6}:
        return "ipv6:" + ",".join(f"[{addr}]:{ep.port}" for (_, addr), ep in resolved)
    raise ValueError("etcd endpoints mix IPv4 and IPv6 addresses: list them in one family")


# --- operation and comparison builders (used in transactions) ---
#
# They are plain tuples, turned into protobuf only when ``txn`` fills its request:
# building each message on its own and then handing it to ``TxnRequest`` copied every one
# twice — 4.1 us per compare+put against 1.5 us when the request's own repeated fields are
# filled in place (a 127-write transaction: 521 -> 185 us).

_MOD = rpc.Compare.CompareTarget.MOD  # enum lookups through the wrapper are slow
_CREATE = rpc.Compare.CompareTarget.CREATE
_LEASE = rpc.Compare.CompareTarget.LEASE
_EQUAL = rpc.Compare.CompareResult.EQUAL
_PUT, _DEL, _GET = 0, 1, 2


class Compare(typing.NamedTuple):
    """One compare of a transaction: ``key``'s ``target`` EQUAL to ``value``."""

    key: bytes
    target: int  # _MOD, _CREATE or _LEASE
    value: int


class Op(typing.NamedTuple):
    """One operation of a transaction (a put, a delete or a get of one key)."""

    kind: int  # _PUT, _DEL or _GET
    key: bytes
    value: bytes = b""
    lease: int = 0


def op_put(key: bytes, value: bytes, lease: int = 0) -> Op:
    return Op(_PUT, key, value, lease)


def op_delete(key: bytes) -> Op:
    return Op(_DEL, key)


def op_get(key: bytes) -> Op:
    return Op(_GET, key)


def cmp_mod(key: bytes, revision: int) -> Compare:
    """True while ``key`` was last modified at ``revision`` (0: the key does not exist)."""
    return Compare(key, _MOD, revision)


def cmp_absent(key: bytes) -> Compare:
    return Compare(key, _CREATE, 0)


def cmp_lease(key: bytes, lease: int) -> Compare:
    """True while ``key`` is attached to ``lease``: the fence of a leader's writes."""
    return Compare(key, _LEASE, lease)


def txn_request(compares: Sequence[Compare], success: Sequence[Op],
                failure: Sequence[Op] = ()) -> Any:
    """The protobuf ``TxnRequest``, its repeated fields filled in place."""
    req = rpc.TxnRequest()
    add = req.compare.add
    for key, target, value in compares:
        c = add()
        c.key = key
        c.target = target
        c.result = _EQUAL
        if target == _MOD:
            c.mod_revision = value
        elif target == _CREATE:
            c.create_revision = value
        else:
            c.lease = value
    _fill(req.success, success)
    _fill(req.failure, failure)
    return req


def _fill(field: Any, ops: Sequence[Op]) -> None:
    add = field.add
    for kind, key, value, lease in ops:
        if kind == _PUT:
            put = add().request_put
            put.key = key
            put.value = value
            if lease:
                put.lease = lease
        elif kind == _DEL:
            add().request_delete_range.key = key
        else:
            add().request_range.key = key


def _kv(raw: Any) -> KV:
    return KV(raw.key, raw.value, raw.mod_revision, raw.create_revision, raw.lease)


class Member(typing.NamedTuple):
    """One etcd cluster member as ``member_list`` reports it (``id`` is etcd's uint64)."""

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool


def member_endpoints(members: Sequence[Member], scheme: str,
                     known: Sequence[Endpoint] = ()) -> list[Endpoint]:
    """The client endpoints of the voting, started members that speak ``scheme``.

    A member serving clients on several addresses (a loopback and a bridge, say) is
    reached on the ones in ``known`` if any: those are the addresses this process was
    given, so the ones it can reach; otherwise on all of them.
    """
    chosen: list[Endpoint] = []
    for member in members:
        if member.is_learner:
            continue
        urls = []
        for url in member.client_urls:
            try:
                ep = parse_endpoint(url)
            except ValueError:
                continue  # not ours to judge: a member etcd accepted, a URL we cannot use
            if ep.scheme == scheme:
                urls.append(ep)
        reachable = [ep for ep in urls if ep in known]
        chosen.extend(ep for ep in (reachable or urls) if ep not in chosen)
    return chosen


class MemberStatus(typing.NamedTuple):
    """What one member says of itself: its id, the leader it follows, its raft index."""

    member_id: int
    leader_id: int
    raft_index: int


class MemberSpace(typing.NamedTuple):
    """One member's backend: its file's size and the part of it holding live data
    (bytes); the difference is what defragmenting it gives back."""

    member_id: int
    endpoint: str
    db_size: int
    db_in_use: int


# gRPC channel options shared by every channel to etcd.
_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    # No cap on received messages: a watch catching up sends up to 1000 revisions of
    # events in one response (7.7 MB for 20,000 small objects written in batches), and
    # gRPC's default 4 MiB limit turns that into an endless resume-and-fail loop.
    ("grpc.max_receive_message_length", -1),
    # A member that comes back (restarted, rejoined) is back in the rotation within a
    # second; gRPC's default backoff grows to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A member whose host vanished (no RST, as after a power cut) is found out by pings
    # on busy connections (watches) within 15 s. etcd refuses pings closer than 5 s.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
)

# etcd refuses a request authorised against its auth store as it was before a change
# (a user or role added, auth enabled) that was applied before the request was: nothing
# is wrong with the request: etcd's Go client refreshes its token and sends it again. A
# certificate user has no token to refresh, so this one just sends it again.
_AUTH_OLD = "revision of auth store is old"
_AUTH_OLD_RETRIES = 3

# etcd ends a watch whose member has lost its leader only when asked to: without this a
# member cut off from the majority leaves its watchers silent instead of sending them on.
_WATCH_METADATA = (("hasleader", "true"),)


class EtcdClient:
    """One gRPC channel spanning every endpoint of one etcd cluster (see the module doc)."""

    def __init__(self, url: str | Sequence[str], tls: Bundle | None = None,
                 auto_sync: bool = True) -> None:
        self.endpoints = parse_endpoints(url)
        self.url = ",".join(ep.url for ep in self.endpoints)
        self.tls = tls
        self.user: str | None = None  # the etcd user our certificate acts as (its CN)
        self._credentials: Any = None
        if self.endpoints[0].scheme == "https":
            if tls is None:
                raise ValueError(
                    f'etcd endpoint "{self.endpoints[0].url}" is https: TLS needs the cluster '
                    "CA, a client certificate and its key (--etcd-ca, --etcd-cert, --etcd-key "
                    "or $SHOAL_ETCD_CA, $SHOAL_ETCD_CERT, $SHOAL_ETCD_KEY)")
            try:
                ca, cert, key = tls.read()
            except OSError as exc:
                raise ValueError(f"cannot read the etcd TLS files: {exc}") from None
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert)
            self.user = certs.common_name(pki_ca.load_cert_pem(cert, str(tls.cert)))
        elif tls is not None:
            raise ValueError(f'a TLS certificate was given but etcd endpoint "{self.url}" is '
                             "http: name the endpoints https://HOST:PORT")
        self._target = grpc_target(self.endpoints)
        self.call_timeout = CALL_TIMEOUT if len(self.endpoints) == 1 else FAILOVER_CALL_TIMEOUT
        self.auto_sync = auto_sync
        # Called with the new endpoints whenever the client moves to another member set.
        self.on_endpoints: Callable[[list[Endpoint]], None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._sync_wanted = asyncio.Event()
        self._retiring: set[asyncio.Task[None]] = set()
        self._channel: Any = None
        self._kv: Any = None
        self._lease: Any = None
        self._watch: Any = None
        self._maint: Any = None
        self._cluster: Any = None
        self._auth: Any = None
        self._reconnected_at = -RECONNECT_MIN_GAP
        # When etcd last started refusing writes for want of space (monotonic seconds),
        # 0 while it accepts them: one warning per outage, however many writes retry.
        self.no_space_since = 0.0

    def _new_channel(self, target: str, balanced: bool) -> Any:
        options = list(_CHANNEL_OPTIONS)
        if balanced:
            options.append(("grpc.lb_policy_name", "round_robin"))
        if self._credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        # Every member's certificate names etcd.shoal: checking that one name lets a
        # single channel span members whatever addresses they are reached on.
        options.append(("grpc.ssl_target_name_override", ETCD_SERVER_NAME))
        return grpc.aio.secure_channel(target, self._credentials, options=options)

    async def connect(self, timeout: float = 5.0) -> None:
        """Open the channel and prove etcd answers; UnavailableError otherwise.

        The proof is a member status, which etcd serves to any client it lets connect,
        whatever its user's roles. Until ``timeout`` a member that is not up yet is
        waited for; a TLS handshake refused is reported at once, saying why.
        """
        self._use(self._new_channel(self._target, len(self.endpoints) > 1))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            try:
                await self._maint.Status(rpc.StatusRequest(), timeout=max(remaining, 0.05))
                break
            except grpc.aio.AioRpcError as exc:
                error = await self._fail(exc)
                retry = type(error) is errors.UnavailableError and remaining > 0.1
                if not retry:
                    await self.close()
                    raise error from None
            await asyncio.sleep(0.1)
        if self.auto_sync:
            self._sync_wanted.set()  # learn the members at once, not in SYNC_INTERVAL
            self._sync_task = loop.create_task(self._sync_loop())

    def _use(self, channel: Any) -> None:
        """Send calls from now on over ``channel`` (calls already started keep theirs)."""
        self._channel = channel
        self._kv = rpc.KVStub(channel)
        self._lease = rpc.LeaseStub(channel)
        self._watch = rpc.WatchStub(channel)
        self._maint = rpc.MaintenanceStub(channel)
        self._cluster = rpc.ClusterStub(channel)
        self._auth = rpc.AuthStub(channel)

    async def close(self) -> None:
        task, self._sync_task = self._sync_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for retiring in list(self._retiring):
            retiring.cancel()  # each closes its channel on the way out
        await asyncio.gather(*self._retiring, return_exceptions=True)
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    # --- following the cluster's membership (see the module doc) ---

    async def _sync_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sync_wanted.wait(), SYNC_INTERVAL)
            self._sync_wanted.clear()
            try:
                await self.sync_members()
            except (errors.StoreError, ValueError) as exc:
                log.debug("member list unavailable; keeping the endpoints", key=self.url,
                          error=str(exc))
            await asyncio.sleep(SYNC_MIN_GAP)

    async def sync_members(self) -> bool:
        """Move to the members' client URLs if they changed; whether the client moved.

        A single-member answer changes nothing: a lone etcd may serve clients on several
        addresses of which this process can reach only the one it was given.
        """
        members = await self.member_list()
        voting = [m for m in members if not m.is_learner and m.client_urls]
        if len(voting) < 2 and len(self.endpoints) < 2:
            return False
        endpoints = member_endpoints(voting, self.endpoints[0].scheme, self.endpoints)
        if not endpoints or set(endpoints) == set(self.endpoints):
            return False
        try:
            target = await asyncio.to_thread(grpc_target, endpoints)
        except ValueError as exc:
            log.warning("etcd members' client URLs unusable; keeping the endpoints",
                        key=self.url, members=[ep.url for ep in endpoints], error=str(exc))
            return False
        channel = self._new_channel(target, len(endpoints) > 1)
        try:
            # Prove the new set answers before trusting it: advertised addresses this
            # process cannot reach must not strand a client whose old set still works.
            await rpc.MaintenanceStub(channel).Status(rpc.StatusRequest(),
                                                      timeout=FAILOVER_CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            await channel.close()
            log.warning("etcd members' client URLs do not answer; keeping the endpoints",
                        key=self.url, members=[ep.url for ep in endpoints],
                        error=_describe(exc))
            return False
        old, before = self._channel, self.url
        if old is None:  # closed meanwhile
            await channel.close()
            return False
        self.endpoints = endpoints
        self.url = ",".join(ep.url for ep in endpoints)
        self._target = target
        self.call_timeout = CALL_TIMEOUT if len(endpoints) == 1 else FAILOVER_CALL_TIMEOUT
        self._use(channel)
        retiring = asyncio.get_running_loop().create_task(self._retire(old))
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)
        log.info("etcd endpoints follow the cluster's members", key=before,
                 endpoints=[ep.url for ep in endpoints])
        if self.on_endpoints is not None:
            self.on_endpoints(list(endpoints))
        return True

    def reconnect(self, why: str) -> None:
        """Move new calls to fresh connections now and end those on the old ones.

        For a process that knows it was cut off (its heartbeat lease lapsed behind a
        partition): its connections may still sit in TCP's retransmission backoff for
        seconds after the network is back, and a watch on them hears nothing until then
        (up to gRPC's keepalive timeout). The calls ended here get the store's retryable
        UnavailableError, so watches resume from their revision on the new channel.
        """
        old = self._channel
        now = time.monotonic()
        if old is None or now - self._reconnected_at < RECONNECT_MIN_GAP:
            return  # one renewal serves every node of a process that lapsed together
        self._reconnected_at = now
        self._use(self._new_channel(self._target, len(self.endpoints) > 1))
        retiring = asyncio.get_running_loop().create_task(self._retire(old, grace=0.0))
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)
        log.info("etcd connections renewed", key=self.url, why=why)

    @staticmethod
    async def _retire(channel: Any, grace: float = RETIRE_GRACE) -> None:
        """Close a replaced channel once the calls still running on it had their time."""
        try:
            await asyncio.sleep(grace)
        finally:
            await channel.close()

    async def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        channel = self._channel  # the one ``method``'s stub belongs to
        for attempt in range(_AUTH_OLD_RETRIES + 1):
            try:
                resp = await method(request, timeout=timeout or self.call_timeout)
                if self.no_space_since and _adds_data(request):
                    self._space_back()
                return resp
            except grpc.aio.AioRpcError as exc:
                if attempt < _AUTH_OLD_RETRIES and _AUTH_OLD in (exc.details() or ""):
                    continue
                raise await self._fail(exc, method) from None
            except asyncio.CancelledError:
                raise self._retired(channel, "call") from None
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _space_back(self) -> None:
        log.warning(errors.SPACE_BACK_EVENT, key=self.url,
                    refused_for=round(time.monotonic() - self.no_space_since, 1))
        self.no_space_since = 0.0

    def _retired(self, channel: Any, what: str) -> BaseException:
        """What a call whose await was cancelled raises: grpc.aio cancels the calls of a
        channel being closed, and when that channel is one this client replaced (the
        client itself still open, the caller's task not being cancelled), the caller
        must see a retryable error, not a cancellation that would silently end it."""
        task = asyncio.current_task()
        if task is not None and task.cancelling() == 0 and self._channel is not None \
                and channel is not self._channel:
            return errors.UnavailableError(self.url, f"{what} ended: its channel was "
                                           "replaced by one to the cluster's current members")
        return asyncio.CancelledError()

    async def _fail(self, exc: grpc.aio.AioRpcError, method: Any = None,
                    url: str | None = None) -> errors.StoreError:
        """The store error for a failed call, diagnosed as far as the client can."""
        url = url or self.url
        code = exc.code()
        details = exc.details() or ""
        if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in details:
            return await self._denied(method)
        limit = _limit_refusal(details)
        if limit:
            return errors.LimitError(url, limit)
        if _NO_SPACE in details:
            if not self.no_space_since:
                self.no_space_since = time.monotonic()
                log.warning("etcd is out of space: writes are refused until it is compacted "
                            "and defragmented; retrying them quietly", key=url,
                            call=_method_name(method))
            return errors.NoSpaceError(url, f"etcd said: {details}")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN):
            refused = _tls_refusal(details, self.tls is not None)
            if refused:
                return errors.TLSRefusedError(url, refused)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            self._sync_wanted.set()  # a member may have gone, or come: look again soon
        detail = _describe(exc)
        if self.tls is None and "Socket closed" in details:
            detail += ("; if the cluster serves TLS, name its endpoints https:// and give "
                       "--etcd-ca, --etcd-cert and --etcd-key")
        return errors.UnavailableError(url, detail)

    async def _denied(self, method: Any) -> errors.StoreError:
        """Permission denied: tell a certificate without an etcd user (a removed node)
        from a user whose roles do not allow the request."""
        what = _method_name(method)
        if self.user is None:
            return errors.PermissionDeniedError("(no client certificate)", what)
        cert = str(self.tls.cert) if self.tls is not None else ""
        try:
            # etcd lets a user read itself, and says "user name not found" to a CN
            # that is no user.
            await self._auth.UserGet(rpc.AuthUserGetRequest(name=self.user),
                                     timeout=self.call_timeout)
        except grpc.aio.AioRpcError as exc:
            if "user name not found" in (exc.details() or ""):
                return errors.UnknownUserError(self.user, cert)
        return errors.PermissionDeniedError(self.user, what, cert)

    async def range(self, key: bytes, end: bytes | None = None, revision: int = 0,
                    limit: int = 0, keys_only: bool = False) -> tuple[list[KV], int, bool]:
        """Keys in ``[key, end)`` at ``revision`` (0: latest). Returns (kvs, revision, more)."""
        req = rpc.RangeRequest(key=key, range_end=end or b"", revision=revision, limit=limit,
                               keys_only=keys_only)
        resp = await self._call(self._kv.Range, req)
        return [_kv(kv) for kv in resp.kvs], resp.header.revision, resp.more

    async def range_raw(self, key: bytes, end: bytes, revision: int = 0,
                        limit: int = 0) -> tuple[Sequence[Any], int, bool]:
        """Like ``range`` but hands back the protobuf key-values without wrapping them."""
        req = rpc.RangeRequest(key=key, range_end=end, revision=revision, limit=limit)
        resp = await self._call(self._kv.Range, req)
        return resp.kvs, resp.header.revision, resp.more

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> tuple[bool, int, list[Any]]:
        """Run one transaction; returns (succeeded, header revision, responses)."""
        req = txn_request(compares, success, failure)
        resp = await self._call(self._kv.Txn, req)
        return resp.succeeded, resp.header.revision, list(resp.responses)

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        resp = await self._call(self._kv.Put, rpc.PutRequest(key=key, value=value, lease=lease))
        revision: int = resp.header.revision
        return revision

    async def delete_prefix(self, prefix: bytes) -> int:
        resp = await self._call(self._kv.DeleteRange,
                                rpc.DeleteRangeRequest(key=prefix, range_end=prefix_end(prefix)))
        deleted: int = resp.deleted
        return deleted

    async def compact(self, revision: int) -> None:
        await self._call(self._kv.Compact,
                         rpc.CompactionRequest(revision=revision, physical=True))

    async def current_revision(self) -> int:
        _, revision, _ = await self.range(b"\0", limit=1, keys_only=True)
        return revision

    # --- leases ---

    async def lease_grant(self, ttl: int) -> int:
        resp = await self._call(self._lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl))
        lease_id: int = resp.ID
        return lease_id

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; returns its new TTL, or 0 if it has already expired."""
        async def requests() -> AsyncIterator[Any]:
            yield rpc.LeaseKeepAliveRequest(ID=lease_id)

        channel = self._channel
        try:
            call = self._lease.LeaseKeepAlive(requests(), timeout=self.call_timeout)
            async for resp in call:
                ttl: int = resp.TTL
                return ttl
        except grpc.aio.AioRpcError as exc:
            raise await self._fail(exc) from None
        except asyncio.CancelledError:
            raise self._retired(channel, "lease keepalive") from None
        return 0

    async def lease_revoke(self, lease_id: int) -> None:
        try:
            await self._lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id),
                                          timeout=self.call_timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return  # already expired: revoking is idempotent for our purposes
            raise await self._fail(exc) from None

    # --- members (etcd's Cluster and Maintenance services) ---

    async def member_list(self) -> list[Member]:
        resp = await self._call(self._cluster.MemberList, rpc.MemberListRequest())
        return [_member(m) for m in resp.members]

    async def member_add(self, peer_urls: Sequence[str]) -> tuple[int, list[Member]]:
        """Announce a new member (started afterwards with initial-cluster-state existing).

        Returns its id and the member list including it (names of unstarted members are
        empty, as etcd reports them).
        """
        resp = await self._call(self._cluster.MemberAdd,
                                rpc.MemberAddRequest(peerURLs=list(peer_urls)))
        return int(resp.member.ID), [_member(m) for m in resp.members]

    async def member_remove(self, member_id: int) -> list[Member]:
        resp = await self._call(self._cluster.MemberRemove,
                                rpc.MemberRemoveRequest(ID=member_id))
        return [_member(m) for m in resp.members]

    async def status(self, endpoint: str, timeout: float = 2.0) -> MemberStatus:
        """Ask the member at ``endpoint`` itself (not any member) for its status.

        MANAGER STATUS and leader detection need one member's own answer, so this opens
        a short-lived channel to that endpoint alone.
        """
        resp = await self._on_member(endpoint, "Status", rpc.StatusRequest(), timeout)
        return MemberStatus(int(resp.header.member_id), int(resp.leader), int(resp.raftIndex))

    # --- space (etcd's Maintenance service: alarms, sizes, defragmentation) ---

    async def alarms(self) -> list[tuple[int, str]]:
        """The alarms raised in the cluster: (member id, ``NOSPACE`` or ``CORRUPT``) each."""
        resp = await self._call(self._maint.Alarm, rpc.AlarmRequest(
            action=rpc.AlarmRequest.AlarmAction.GET, memberID=0,
            alarm=rpc.AlarmType.NONE))
        return [(int(a.memberID), rpc.AlarmType.Name(a.alarm)) for a in resp.alarms]

    async def alarm_disarm(self, member_id: int, alarm: str = "NOSPACE") -> None:
        """Clear ``alarm`` of one member (etcd accepts writes once no NOSPACE is left)."""
        await self._call(self._maint.Alarm, rpc.AlarmRequest(
            action=rpc.AlarmRequest.AlarmAction.DEACTIVATE, memberID=member_id,
            alarm=rpc.AlarmType.Value(alarm)))

    async def space(self, endpoint: str, timeout: float = 5.0) -> MemberSpace:
        """The backend size of the member at ``endpoint`` (on disk and in use)."""
        resp = await self._on_member(endpoint, "Status", rpc.StatusRequest(), timeout)
        return MemberSpace(int(resp.header.member_id), endpoint, int(resp.dbSize),
                           int(resp.dbSizeInUse))

    async def defragment(self, endpoint: str, timeout: float = 120.0) -> None:
        """Defragment the member at ``endpoint``: its file shrinks to the data in use.
        The member serves nothing meanwhile (a small database takes well under a second,
        etcd's documentation gives ~10 s per GiB), so callers do one member at a time."""
        await self._on_member(endpoint, "Defragment", rpc.DefragmentRequest(), timeout)

    async def _on_member(self, endpoint: str, method: str, request: Any,
                         timeout: float) -> Any:
        """One Maintenance call answered by the member at ``endpoint`` itself."""
        ep = parse_endpoint(endpoint)
        channel = self._new_channel(grpc_target([ep]), balanced=False)
        try:
            return await getattr(rpc.MaintenanceStub(channel), method)(request,
                                                                       timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise await self._fail(exc, url=ep.url) from None
        finally:
            await channel.close()

    # --- auth (etcd's Auth service; users authenticate by their certificate's CN) ---

    async def user_add(self, name: str) -> None:
        """An etcd user without a password: only a certificate with CN ``name`` is it."""
        await self._call(self._auth.UserAdd, rpc.AuthUserAddRequest(
            name=name, options=rpc.UserAddOptions(no_password=True)))

    async def user_delete(self, name: str) -> None:
        await self._call(self._auth.UserDelete, rpc.AuthUserDeleteRequest(name=name))

    async def user_list(self) -> list[str]:
        resp = await self._call(self._auth.UserList, rpc.AuthUserListRequest())
        return list(resp.users)

    async def user_grant_role(self, user: str, role: str) -> None:
        await self._call(self._auth.UserGrantRole,
                         rpc.AuthUserGrantRoleRequest(user=user, role=role))

    async def user_revoke_role(self, user: str, role: str) -> None:
        await self._call(self._auth.UserRevokeRole,
                         rpc.AuthUserRevokeRoleRequest(name=user, role=role))

    async def role_add(self, name: str) -> None:
        await self._call(self._auth.RoleAdd, rpc.AuthRoleAddRequest(name=name))

    async def role_delete(self, name: str) -> None:
        await self._call(self._auth.RoleDelete, rpc.AuthRoleDeleteRequest(role=name))

    async def role_list(self) -> list[str]:
        resp = await self._call(self._auth.RoleList, rpc.AuthRoleListRequest())
        return list(resp.roles)

    async def role_grant(self, role: str, key: bytes, range_end: bytes = b"",
                         read: bool = True, write: bool = False) -> None:
        """Let ``role`` read and/or write ``[key, range_end)`` (just ``key`` without an end)."""
        if not (read or write):
            raise ValueError("a permission grants read, write or both")
        kind = _READWRITE if read and write else (_READ if read else _WRITE)
        perm = auth_pb2.Permission(permType=kind, key=key, range_end=range_end)
        await self._call(self._auth.RoleGrantPermission,
                         rpc.AuthRoleGrantPermissionRequest(name=role, perm=perm))

    async def role_revoke(self, role: str, key: bytes, range_end: bytes = b"") -> None:
        await self._call(self._auth.RoleRevokePermission,
                         rpc.AuthRoleRevokePermissionRequest(role=role, key=key,
                                                             range_end=range_end))

    async def role_get(self, role: str) -> list[tuple[bytes, bytes, bool, bool]]:
        """The permissions of ``role``: (key, range_end, read, write) each."""
        resp = await self._call(self._auth.RoleGet, rpc.AuthRoleGetRequest(role=role))
        return [(p.key, p.range_end, p.permType in (_READ, _READWRITE),
                 p.permType in (_WRITE, _READWRITE)) for p in resp.perm]

    async def auth_enable(self) -> None:
        """Turn auth on. etcd insists that user ``root`` exists and has role ``root``."""
        await self._call(self._auth.AuthEnable, rpc.AuthEnableRequest())

    async def auth_disable(self) -> None:
        await self._call(self._auth.AuthDisable, rpc.AuthDisableRequest())

    async def auth_status(self) -> bool:
        """Whether auth is on. etcd 3.4 has no AuthStatus call (UNIMPLEMENTED); there a
        password login tells instead: refused as "authentication is not enabled" when
        off, as a failed login when on (no Shoal user has a password)."""
        try:
            resp = await self._auth.AuthStatus(rpc.AuthStatusRequest(),
                                               timeout=self.call_timeout)
            return bool(resp.enabled)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise await self._fail(exc) from None
        try:
            await self._auth.Authenticate(
                rpc.AuthenticateRequest(name="shoal:auth-probe", password="-"),
                timeout=self.call_timeout)
        except grpc.aio.AioRpcError as exc:
            if "not enabled" in (exc.details() or ""):
                return False
            if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                              grpc.StatusCode.FAILED_PRECONDITION):
                return True
            raise await self._fail(exc) from None
        return True

    # --- watch ---

    async def watch_stream(self, prefix: bytes, start_revision: int,
                           ) -> AsyncIterator[tuple[int, list[RawEvent]]]:
        """One watch stream on a key prefix from ``start_revision`` (inclusive).

        Yields (header revision, events) per response, including empty progress
        notifications, so callers can advance their resume point while idle. Raises
        CompactedError when the start revision is gone and UnavailableError when the
        stream breaks; resuming is the caller's job (see ``shoal.store.watch``).
        """
        queue: asyncio.Queue[Any] = asyncio.Queue()
        create = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=prefix, range_end=prefix_end(prefix), start_revision=start_revision,
            progress_notify=True))
        await queue.put(create)

        async def requests() -> AsyncIterator[Any]:
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item

        channel = self._channel
        call = self._watch.Watch(requests(), metadata=_WATCH_METADATA)
        try:
            async for resp in call:
                if resp.compact_revision:
                    raise CompactedError(resp.compact_revision)
                if resp.canceled:
                    # A refused creation comes as created *and* canceled: check this first.
                    if "permission denied" in resp.cancel_reason:
                        raise await self._denied(self._watch.Watch)
                    raise errors.UnavailableError(self.url, f"watch canceled: {resp.cancel_reason}")
                if resp.created and not resp.events:
                    # The creation ack's header revision says nothing about how far a
                    # catching-up watcher has got, so it must not move a resume point.
                    continue
                events = []
                for ev in resp.events:
                    kv = ev.kv  # each access builds a wrapper object: once per event
                    events.append(RawEvent(kv.key, kv.value, kv.mod_revision,
                                           kv.create_revision, ev.type == _DELETE))
                yield resp.header.revision, events
        except grpc.aio.AioRpcError as exc:
            raise await self._fail(exc) from None
        except asyncio.CancelledError:
            # A watch outlives RETIRE_GRACE: this is how it moves to the new members.
            raise self._retired(channel, "watch") from None
        finally:
            await queue.put(None)
            call.cancel()
        raise errors.UnavailableError(self.url, "watch stream ended")


# etcd's refusals of a request over its own limits, and the flag that raises each. Shoal
# batches up to 128 objects per transaction, each with its projections, so an etcd it
# did not start itself needs these (``etcd_server`` passes them to the etcd it runs).
_LIMITS = (
    ("too many operations in txn request",
     "a transaction has more operations than its --max-txn-ops allows; Shoal needs "
     "--max-txn-ops 1024 (docs/store.md)"),
    ("request is too large",
     "a request is bigger than its --max-request-bytes; Shoal needs "
     "--max-request-bytes 8388608 (docs/store.md)"),
)


# etcd's refusal of a write while its NOSPACE alarm is raised (gRPC RESOURCE_EXHAUSTED;
# matched on the text, which is etcd's API, since gRPC's own oversized-message refusal
# has the same code).
_NO_SPACE = "database space exceeded"


def _adds_data(request: Any) -> bool:
    """Whether etcd refuses ``request`` while out of space: a put, a lease grant, or a
    transaction with a put (reads and deletes it still serves)."""
    if isinstance(request, (rpc.PutRequest, rpc.LeaseGrantRequest)):
        return True
    if isinstance(request, rpc.TxnRequest):
        return any(op.HasField("request_put") for op in (*request.success, *request.failure))
    return False


def _limit_refusal(details: str) -> str | None:
    for marker, explanation in _LIMITS:
        if marker in details:
            return f"{explanation} (etcd said: {details})"
    return None


def _member(raw: Any) -> Member:
    return Member(int(raw.ID), raw.name, tuple(raw.peerURLs), tuple(raw.clientURLs),
                  bool(raw.isLearner))


def _describe(exc: grpc.aio.AioRpcError) -> str:
    code = exc.code()
    name = code.name if code is not None else "UNKNOWN"
    details = (exc.details() or "").splitlines()[0] if exc.details() else ""
    return f"{name.lower()}: {details}" if details else name.lower()


def _method_name(method: Any) -> str:
    """``Range``, ``Txn``... from a stub's callable, for error messages."""
    raw = getattr(method, "_method", b"") or b""
    name = raw.decode() if isinstance(raw, bytes) else str(raw)
    return f"the {name.rsplit('/', 1)[-1]} request" if name else "the request"


def _tls_refusal(details: str, with_tls: bool) -> str:
    """Why a TLS handshake failed, in words a user can act on ('' if it was not TLS)."""
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return ("its server certificate is not signed by the CA given with --etcd-ca, or "
                "does not name etcd.shoal: is this the right cluster and the right CA file?")
    if "TSI_DATA_CORRUPTED" in details or "BAD_CERTIFICATE" in details or \
            "CERTIFICATE_REQUIRED" in details:
        return ("etcd rejected the client certificate: it must be issued by the cluster's CA "
                "(check --etcd-cert/--etcd-key belong to this cluster)")
    if "Endpoint closing" in details:
        # The member closed the connection mid-handshake (seen while it starts up under
        # systemd): a member not ready yet, to be waited for, not a refusal.
        return ""
    if with_tls and ("WRONG_VERSION_NUMBER" in details or "handshake" in details.lower()):
        return ("the endpoint does not speak TLS: name it http:// and drop --etcd-ca, "
                "--etcd-cert and --etcd-key, or point at the cluster's https endpoints")
    return ""
