"""Typed resource access on etcd: create, get, list, compare-and-swap update, delete.

Every write is one etcd transaction that compares the key's ``mod_revision`` with the
object's ``resourceVersion``, so a stale writer gets :class:`ConflictError` and must
re-read: no lost updates, whoever crashes mid-way. A :class:`Fence` adds a comparison on
a leader-election key, so a controller that lost its lease cannot write at all.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import functools
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import structlog

from shoal.crds import kinds, resource, selectors
from shoal.pki.bundle import Bundle
from shoal.store import codec, echo, errors, etcd, groupcommit, projections, retry

log = structlog.get_logger("shoal.store.client")

# etcd's default --max-txn-ops: a larger batch is split by callers (see ``commit``). It
# counts the objects written; their projections (``shoal.store.projections``) ride along
# in the same transaction, up to 4 more operations each, which is why the
# etcd Shoal starts runs with ``--max-txn-ops 1024`` (``etcd_server``).
MAX_TXN_OPS = 128


@dataclasses.dataclass(frozen=True)
class Fence:
    """Write only while ``key`` is still attached to ``lease`` (the writer is leader)."""

    key: bytes
    lease: int


@dataclasses.dataclass
class Op:
    """One write in a batched transaction: ``create``, ``update`` or ``delete``."""

    action: str
    info: kinds.KindInfo
    obj: resource.Resource


_UID_BATCH = 256
_uid_pool = bytearray()


def _forget_uid_pool() -> None:
    _uid_pool.clear()  # a forked child must not hand out its parent's next UUIDs


os.register_at_fork(after_in_child=_forget_uid_pool)


def new_uid() -> str:
    """A random (version 4) UUID string, as ``str(uuid.uuid4())`` gives, at a fraction of
    its cost: bulk creates stamp one on each of 100,000 tasks, and one ``getrandom`` call
    per UUID cost 6 us on this VM, so randomness is drawn 256 UUIDs at a time."""
    if not _uid_pool:
        _uid_pool.extend(os.urandom(16 * _UID_BATCH))
    raw = _uid_pool[-16:]
    del _uid_pool[-16:]
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _ref(info: kinds.KindInfo, name: str, namespace: str | None) -> str:
    if info.namespaced:
        return f"{info.plural}/{namespace or resource.DEFAULT_NAMESPACE}/{name}"
    return f"{info.plural}/{name}"


class Store:
    """Resources of every kind under one key prefix (``/shoal`` by default) of one etcd."""

    def __init__(self, client: etcd.EtcdClient, prefix: str = "/shoal",
                 echoes: bool = False, retry_policy: retry.Policy = retry.DEFAULT,
                 section: str = "registry") -> None:
        self.etcd = client
        self.prefix = "/" + prefix.strip("/")
        self.section = section
        # Every call retries through a member's death (see ``shoal.store.retry``).
        self.retry = retry_policy
        self._group = groupcommit.GroupCommitter(self._txn)
        # Objects written with ``commit(share=True)``, for this store's watches to take
        # instead of decoding their echo (``shoal.store.echo``).
        self.echoes: echo.EchoCache | None = echo.EchoCache() if echoes else None

    @classmethod
    async def connect(cls, url: str, prefix: str = "/shoal", timeout: float = 5.0,
                      echoes: bool = False, tls: Bundle | None = None) -> Store:
        """A store on etcd at ``url`` (one endpoint or a comma-separated list; https ones
        need ``tls``, the cluster CA and a client certificate), connected within
        ``timeout`` seconds, or UnavailableError.

        The first read may meet a member mid-election ("leader changed") and fail at once,
        long before ``timeout``: that is retried on a fresh channel until the time is up.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            client = etcd.EtcdClient(url, tls)
            try:
                await client.connect(timeout=max(0.1, deadline - loop.time()))
                return cls(client, prefix, echoes)
            except errors.TLSRefusedError:
                raise  # permanent: no retry makes etcd accept this certificate
            except errors.UnavailableError:
                if loop.time() + 0.1 >= deadline:
                    raise
            await asyncio.sleep(0.1)

    def view(self, section: str) -> Store:
        """A store reading the projections of ``section`` (``dataplane``) as if they were
        the registry: same kinds, same list and watch, over this store's connection.
        Read-only by contract: only the store writes projections, with their sources.
        Closing it closes nothing (the connection is this store's)."""
        return _View(self.etcd, self.prefix, section=section)

    @property
    def url(self) -> str:
        return self.etcd.url

    async def close(self) -> None:
        await self.etcd.close()

    # --- keys ---

    def key(self, info: kinds.KindInfo, name: str, namespace: str | None = None) -> bytes:
        return codec.object_key(self.prefix, info, name, self._ns(info, namespace),
                                self.section)

    def kind_prefix(self, info: kinds.KindInfo, namespace: str | None = None) -> bytes:
        return codec.kind_prefix(self.prefix, info, namespace, self.section)

    def raw_key(self, *parts: str) -> bytes:
        """A key outside the registry (leader locks, heartbeats): ``<prefix>/<parts...>``."""
        return "/".join([self.prefix, *parts]).encode()

    @staticmethod
    def _ns(info: kinds.KindInfo, namespace: str | None) -> str | None:
        if not info.namespaced:
            return None
        return namespace or resource.DEFAULT_NAMESPACE

    # --- reads ---

    async def get(self, info: kinds.KindInfo, name: str,
                  namespace: str | None = None) -> resource.Resource:
        key = self.key(info, name, namespace)
        kvs, _, _ = await self._range(key)
        ref = _ref(info, name, self._ns(info, namespace))
        if not kvs:
            raise errors.NotFoundError(ref)
        try:
            obj = codec.decode(kvs[0].value, kvs[0].mod_revision)
        except codec.UndecodableError as exc:
            raise errors.CorruptObjectError(ref, str(exc)) from None
        problem = codec.identity_error(info, self.kind_prefix(info), key, obj)
        if problem is not None:
            raise errors.CorruptObjectError(ref, problem)
        return obj

    async def list(self, info: kinds.KindInfo, namespace: str | None = None,
                   selector: selectors.Selector | str | None = None, revision: int = 0,
                   page_size: int = 5000) -> tuple[builtins.list[resource.Resource], int]:
        """Objects of a kind (all namespaces when ``namespace`` is None) at one revision.

        Pages through large ranges, pinning every page to the first page's revision so the
        result is one consistent snapshot. Returns (objects, revision).
        """
        sel = selectors.parse(selector) if isinstance(selector, str) else selector
        out: builtins.list[resource.Resource] = []
        at = revision
        async for page, page_revision in self.pages(info, namespace, revision, page_size):
            out.extend(o for o in page if sel is None or sel.matches(o.metadata.labels))
            at = page_revision
        return out, at

    async def pages(self, info: kinds.KindInfo, namespace: str | None = None,
                    revision: int = 0, page_size: int = 5000,
                    ) -> AsyncIterator[tuple[builtins.list[resource.Resource], int]]:
        """:meth:`list`'s pages as they are read: (objects, the snapshot's revision), one
        consistent snapshot, at least one (possibly empty) page. A consumer that keeps a
        little of each object need never hold the whole kind decoded at once."""
        start = self.kind_prefix(info, namespace)
        base = self.kind_prefix(info)
        end = etcd.prefix_end(start)
        while True:
            kvs, rev, more = await retry.call(
                self.retry, "range", functools.partial(self.etcd.range_raw, start, end,
                                                       revision, page_size), start.decode())
            revision = revision or rev
            page = [obj for kv in kvs if (obj := codec.decode_at(
                info, base, kv.key, kv.value, kv.mod_revision)) is not None]
            yield page, revision
            if not more or not kvs:
                return
            start = kvs[-1].key + b"\0"

    # --- projections (shoal.store.projections) ---

    def _projection_ops(self, old: projections.Memo | None, new: resource.Resource,
                        ) -> builtins.list[etcd.Op]:
        """The puts and deletes that keep ``new``'s projections equal to it."""
        memo = codec.stored_memo(new)
        if memo is None:
            return []
        puts, stale = projections.changes(self.prefix, old, new, memo)
        return [*(etcd.op_put(k, v) for k, v in puts.items()),
                *(etcd.op_delete(k) for k in stale)]

    def _unprojection_ops(self, obj: resource.Resource, memo: projections.Memo | None,
                          ) -> builtins.list[etcd.Op]:
        """Deletes of every projection of ``obj`` (stored as ``memo`` says), deleted with it."""
        return [etcd.op_delete(k) for k in projections.deleted(self.prefix, obj, memo)]

    def _remember_projected(self, obj: resource.Resource) -> None:
        if projections.projects(obj.kind):
            digest = codec.stored_spec_digest(obj)
            assert digest is not None  # set by _prepare_create / _prepare_update
            codec.remember_memo(obj, projections.memo_of(obj, digest))

    async def _orphaned_projections(self, info: kinds.KindInfo, name: str,
                                    namespace: str | None) -> builtins.list[etcd.Op]:
        """Deletes of the projections of an object whose value cannot be read, so its
        node is unknown: every node's task projection of that name is looked for (rare)."""
        if not projections.projects(info.kind):
            return []
        ns = self._ns(info, namespace) or resource.DEFAULT_NAMESPACE
        keys = projections.possible_keys(self.prefix, info.kind, ns, name, None)
        nodes = f"{self.prefix}/{projections.NODES_DIR}/".encode()
        suffix = f"/tasks/{ns}/{name}".encode()
        kvs, _, _ = await self.etcd.range(nodes, etcd.prefix_end(nodes), keys_only=True)
        keys += [kv.key for kv in kvs if kv.key.endswith(suffix)
                 and kv.key.count(b"/") == nodes.count(b"/") + 3]
        return [etcd.op_delete(k) for k in keys]

    # --- writes ---

    @staticmethod
    def _copy(obj: resource.Resource) -> resource.Resource:
        """A copy whose envelope the store may change; spec/status are shared, since the
        store never mutates them and a deep copy dominated the cost of bulk writes."""
        return resource.Resource(obj.kind, obj.metadata.copy(), obj.spec, obj.status,
                                 obj.apiVersion)

    def _prepare_create(self, info: kinds.KindInfo, obj: resource.Resource) -> resource.Resource:
        new = self._copy(obj)
        new.kind = info.kind
        new.apiVersion = info.api_version
        new.metadata.namespace = self._ns(info, new.metadata.namespace)
        new.metadata.uid = new.metadata.uid or new_uid()
        new.metadata.generation = 1
        new.metadata.creationTimestamp = resource.now_rfc3339()
        new.metadata.deletionTimestamp = None
        codec.remember_spec(new)  # the spec it is stored with, as ``_prepare_update`` does
        self._remember_projected(new)
        return new

    def _prepare_update(self, obj: resource.Resource) -> resource.Resource:
        new = self._copy(obj)
        old_digest = codec.stored_spec_digest(obj)
        digest = codec.spec_digest(new.spec)
        if old_digest is None or old_digest != digest:
            # Unknown provenance counts as a change: a spurious generation bump only
            # costs a re-reconcile, a missed one would hide a spec change.
            new.metadata.generation = max(new.metadata.generation, 0) + 1
        codec.remember_spec(new, digest)
        self._remember_projected(new)
        return new

    async def create(self, info: kinds.KindInfo, obj: resource.Resource,
                     fence: Fence | None = None, lease: int = 0) -> resource.Resource:
        """Create ``obj``; AlreadyExistsError if the key exists. Returns the stored object."""
        new = self._prepare_create(info, obj)
        key = self.key(info, new.name, new.namespace)
        ok, rev = await self._write([etcd.cmp_absent(key)],
                                    [etcd.op_put(key, codec.encode(new), lease),
                                     *self._projection_ops(None, new)], fence, key)
        if not ok:
            raise errors.AlreadyExistsError(_ref(info, new.name, new.namespace))
        return self._stored(new, rev)

    async def update(self, info: kinds.KindInfo, obj: resource.Resource,
                     fence: Fence | None = None) -> resource.Resource:
        """Compare-and-swap ``obj`` over the version it was read at.

        ``generation`` goes up only if ``spec`` changed. An object being deleted whose last
        finalizer this update removes is deleted instead, as in Kubernetes.
        """
        if not obj.metadata.resourceVersion:
            raise ValueError(f"update of {obj.ref} needs metadata.resourceVersion (read it first)")
        old = codec.stored_memo(obj)
        new = self._prepare_update(obj)
        key = self.key(info, new.name, new.namespace)
        compare = [etcd.cmp_mod(key, int(new.metadata.resourceVersion))]
        if new.metadata.deletionTimestamp and not new.metadata.finalizers:
            ok, rev = await self._write(compare, [etcd.op_delete(key),
                                                  *self._unprojection_ops(new, old)], fence, key)
        else:
            ok, rev = await self._write(compare, [etcd.op_put(key, codec.encode(new)),
                                                  *self._projection_ops(old, new)], fence,
                                        key)
        if not ok:
            raise errors.ConflictError(_ref(info, new.name, new.namespace),
                                       f"resourceVersion {new.metadata.resourceVersion} is stale")
        return self._stored(new, rev)

    async def delete(self, info: kinds.KindInfo, name: str, namespace: str | None = None,
                     fence: Fence | None = None) -> resource.Resource | None:
        """Delete an object, honouring finalizers.

        With finalizers the object only gets ``deletionTimestamp`` and is returned; the
        controllers owning the finalizers remove them and the last removal deletes it.
        Returns None when the object is gone. NotFoundError if it did not exist.
        """
        while True:
            try:
                obj = await self.get(info, name, namespace)
            except errors.CorruptObjectError:
                # Nothing can honour finalizers on a value nobody can read: just remove it.
                await self._write([], [etcd.op_delete(self.key(info, name, namespace)),
                                       *await self._orphaned_projections(info, name, namespace)],
                                  fence)
                return None
            key = self.key(info, obj.name, obj.namespace)
            compare = [etcd.cmp_mod(key, int(obj.metadata.resourceVersion))]
            if obj.metadata.finalizers:
                if obj.metadata.deletionTimestamp:
                    return obj
                obj.metadata.deletionTimestamp = resource.now_rfc3339()
                ok, rev = await self._write(compare, [etcd.op_put(key, codec.encode(obj))], fence,
                                            key)
                if ok:
                    return self._stored(obj, rev)
            else:
                ok, _ = await self._write(compare, [etcd.op_delete(key),
                                                    *self._unprojection_ops(
                                                        obj, codec.stored_memo(obj))],
                                          fence, key)
                if ok:
                    return None
            # Lost a race with another writer: re-read and decide again.

    async def commit(self, ops: Sequence[Op], fence: Fence | None = None,
                     share: bool = False) -> builtins.list[resource.Resource | None]:
        """Apply up to MAX_TXN_OPS writes atomically: all happen, or ConflictError and none.

        ``update`` and ``delete`` ops compare on the object's resourceVersion (a delete
        without one deletes unconditionally); finalizers are not consulted for batch deletes.

        ``share=True`` promises that neither the ops' objects nor the returned ones are
        changed afterwards: the stored objects then stand in for their watch echoes in
        this store's informers (when the store keeps echoes), which skip decoding them.
        """
        if len(ops) > MAX_TXN_OPS - (1 if fence else 0):
            raise ValueError(f"a transaction holds at most {MAX_TXN_OPS} operations, got "
                             f"{len(ops)}; split the batch")
        compares: builtins.list[Any] = []
        puts: builtins.list[Any] = []
        prepared: builtins.list[resource.Resource | None] = []
        written: builtins.list[tuple[bytes, bytes, resource.Resource]] = []
        for op in ops:
            if op.action == "create":
                new = self._prepare_create(op.info, op.obj)
                key = self.key(op.info, new.name, new.namespace)
                value = codec.encode(new)
                compares.append(etcd.cmp_absent(key))
                puts.append(etcd.op_put(key, value))
                puts.extend(self._projection_ops(None, new))
                prepared.append(new)
                written.append((key, value, new))
            elif op.action == "update":
                old = codec.stored_memo(op.obj)
                new = self._prepare_update(op.obj)
                key = self.key(op.info, new.name, new.namespace)
                value = codec.encode(new)
                compares.append(etcd.cmp_mod(key, int(new.metadata.resourceVersion)))
                puts.append(etcd.op_put(key, value))
                puts.extend(self._projection_ops(old, new))
                prepared.append(new)
                written.append((key, value, new))
            elif op.action == "delete":
                key = self.key(op.info, op.obj.name, op.obj.namespace)
                if op.obj.metadata.resourceVersion:
                    compares.append(etcd.cmp_mod(key, int(op.obj.metadata.resourceVersion)))
                puts.append(etcd.op_delete(key))
                if projections.projects(op.info.kind):
                    # The object as the caller holds it names its node; a bare name
                    # (no spec) does not, so its projections are looked for.
                    puts.extend(self._unprojection_ops(op.obj, codec.stored_memo(op.obj))
                                if op.obj.spec
                                else await self._orphaned_projections(
                                    op.info, op.obj.name, op.obj.namespace))
                prepared.append(None)
            else:
                raise ValueError(f"unknown op {op.action!r}")
        if share and self.echoes is not None:
            # Before sending: the echo may come back before the write's own answer.
            self.echoes.put(written)
        ok, rev = await self._write(compares, puts, fence)
        if not ok:
            refs = ", ".join(op.obj.ref for op in ops[:5])
            more = "..." if len(ops) > 5 else ""
            raise errors.ConflictError(f"batch of {len(ops)} ({refs}{more})")
        return [self._stored(obj, rev) if obj is not None else None for obj in prepared]

    async def _range(self, key: bytes, end: bytes | None = None,
                     keys_only: bool = False) -> tuple[builtins.list[etcd.KV], int, bool]:
        return await retry.call(self.retry, "range",
                                functools.partial(self.etcd.range, key, end,
                                                  keys_only=keys_only),
                                key.decode(errors="replace"))

    async def _txn(self, compares: Sequence[Any], ops: Sequence[Any]) -> tuple[bool, int]:
        ok, rev, _ = await self.txn(compares, ops)
        return ok, rev

    async def txn(self, compares: Sequence[Any], ops: Sequence[Any],
                  ) -> tuple[bool, int, builtins.list[Any]]:
        """One etcd transaction, retried through a member's death without applying twice.

        An attempt that got no answer may have been applied. Its retry then fails its
        compares (every write here is guarded), and the keys are read back: if they hold
        exactly what this transaction wrote, it is reported as the success it was (with
        no responses). See ``shoal.store.retry``.
        """
        keys = retry.touched_keys(ops)
        what = keys[0].decode(errors="replace") if keys else ""
        attempts = retry.Attempts(self.retry, "txn", what)
        while True:
            try:
                async with asyncio.timeout(attempts.timeout()):
                    ok, rev, responses = await self.etcd.txn(compares, ops)
            except (errors.UnavailableError, TimeoutError) as exc:
                await attempts.failed(exc)
                continue
            if ok or not attempts.failures or not keys:
                return ok, rev, responses
            current, landed_rev = await self._read_back(keys)
            if retry.landed(ops, current):
                log.info("an earlier attempt of this write was applied", key=what,
                         revision=landed_rev or rev)
                return True, landed_rev or rev, []
            return ok, rev, responses

    async def _read_back(self, keys: builtins.list[bytes],
                         ) -> tuple[dict[bytes, tuple[bytes, int] | None], int]:
        """Each key's (value, lease) or None, and the newest mod revision among them."""
        async def read() -> tuple[bool, int, builtins.list[Any]]:
            return await self.etcd.txn([], [etcd.op_get(k) for k in keys])
        _, _, responses = await retry.call(self.retry, "read-back", read,
                                           keys[0].decode(errors="replace"))
        current: dict[bytes, tuple[bytes, int] | None] = dict.fromkeys(keys)
        newest = 0
        for resp in responses:
            for kv in resp.response_range.kvs:
                current[kv.key] = (kv.value, kv.lease)
                newest = max(newest, kv.mod_revision)
        return current, newest

    async def _write(self, compares: builtins.list[Any], ops: builtins.list[Any],
                     fence: Fence | None, key: bytes | None = None) -> tuple[bool, int]:
        """One conditional write. Single-object writes (``key`` given) are group-committed
        with other concurrent ones; see ``shoal.store.groupcommit``."""
        if fence is not None:
            # The lease compare rides along with the object's own compares, so a group
            # of fenced writes stays all-or-nothing per write like any other.
            compares = [etcd.cmp_lease(fence.key, fence.lease), *compares]
        if key is not None:
            ok, rev = await self._group.submit(key, compares, ops)
        else:
            ok, rev = await self._txn(compares, ops)
        if ok or fence is None:
            return ok, rev
        # Tell a lost lease apart from an ordinary conflict.
        held, _, _ = await self.txn([etcd.cmp_lease(fence.key, fence.lease)], [])
        if not held:
            raise errors.FencedError("write", fence.key.decode())
        return False, rev

    @staticmethod
    def _stored(obj: resource.Resource, revision: int) -> resource.Resource:
        obj.metadata.resourceVersion = str(revision)
        return obj

    # --- raw keys, leases ---

    # A lease granted by an attempt that got no answer is never used and expires after
    # its TTL; keepalives and revokes are idempotent. So all three are simply retried.

    async def grant_lease(self, ttl: int) -> int:
        return await retry.call(self.retry, "lease-grant",
                                functools.partial(self.etcd.lease_grant, ttl))

    async def keepalive(self, lease_id: int) -> int:
        return await retry.call(self.retry, "lease-keepalive",
                                functools.partial(self.etcd.lease_keepalive, lease_id),
                                f"lease {lease_id:x}")

    async def revoke_lease(self, lease_id: int) -> None:
        await retry.call(self.retry, "lease-revoke",
                         functools.partial(self.etcd.lease_revoke, lease_id))

    async def raw_get(self, key: bytes) -> etcd.KV | None:
        kvs, _, _ = await self._range(key)
        return kvs[0] if kvs else None

    async def raw_put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        # An unconditional put of the same bytes twice leaves the same state.
        return await retry.call(self.retry, "put",
                                functools.partial(self.etcd.put, key, value, lease),
                                key.decode(errors="replace"))

    async def raw_create(self, key: bytes, value: bytes, lease: int = 0) -> bool:
        """Put ``key`` only if it does not exist (a lock acquire); True if this call made it."""
        ok, _, _ = await self.txn([etcd.cmp_absent(key)], [etcd.op_put(key, value, lease)])
        return ok

    async def raw_delete_if_lease(self, key: bytes, lease: int) -> bool:
        ok, _, _ = await self.txn([etcd.cmp_lease(key, lease)], [etcd.op_delete(key)])
        return ok

    async def raw_list(self, prefix: bytes) -> tuple[builtins.list[etcd.KV], int]:
        kvs, rev, _ = await self._range(prefix, etcd.prefix_end(prefix))
        return kvs, rev

    def raw_watch(self, prefix: bytes, start_revision: int,
                  ) -> AsyncIterator[tuple[int, builtins.list[etcd.RawEvent]]]:
        return self.etcd.watch_stream(prefix, start_revision)


class _View(Store):
    """``Store.view``: a section of projections, sharing its parent's connection."""

    async def close(self) -> None:
        pass

