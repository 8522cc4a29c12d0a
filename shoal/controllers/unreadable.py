"""``Unreadable`` Events for values in etcd that Shoal cannot read.

A value written straight into etcd that does not decode (not JSON, the wrong shape) or
that names another object than its key is skipped by every list and watch
(``shoal.store.codec``): one bad value must not stop a cache. A skipped value has no
object to carry a condition, and ``swctl get`` does not list it, so without this
controller the only trace was a warning in some process's log. ``swctl describe`` of such
an object already says it cannot be read; this controller makes it visible where users
watch for trouble: ``swctl get events -w`` shows a Warning ``Unreadable`` naming the key,
why it cannot be read and how to fix it.

How: the codec tells every listener of this process about each value it skipped (on the
reading coroutine, so the listener only notes the key). The elected runnable reads each
noted key again before reporting — it may have been fixed or deleted meanwhile, or noted
by a process that was not the leader then — and records the Event once per value (key
and revision). The notes are kept while the process does not lead, so a new leader
reports what its caches skipped at start-up; they are bounded, since a flood of garbage
must not grow the controller-manager's memory without end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from shoal.crds import kinds, resource
from shoal.runtime import events, runnable
from shoal.runtime import logging as rt_logging
from shoal.store import codec, errors

log = rt_logging.get_logger("shoal.controllers.unreadable")

NAME: Final = "unreadable"
REASON: Final = "Unreadable"
#: Keys noted and not yet looked at, at most (the oldest are dropped beyond it).
MAX_NOTED: Final = 10_000


class UnreadableReporter:
    """Notes skipped values (codec listener) and reports them while leading."""

    def __init__(self) -> None:
        self._noted: dict[bytes, tuple[int, str]] = {}  # key -> (revision, why)
        self._reported: dict[bytes, int] = {}  # key -> revision already reported
        self._wake: asyncio.Event | None = None
        self.remove_listener = codec.add_unreadable_listener(self.note)
        self.spec = runnable.RunnableSpec(name=NAME, run=self._run)

    def note(self, key: bytes, revision: int, why: str) -> None:
        if self._reported.get(key) == revision:
            return  # a relist reading the same bad value again: said already
        if key not in self._noted and len(self._noted) >= MAX_NOTED:
            self._noted.pop(next(iter(self._noted)))
        self._noted[key] = (revision, why)
        if self._wake is not None:
            self._wake.set()

    async def _run(self, ctx: runnable.RunContext) -> None:
        self._wake = asyncio.Event()
        registry = codec.registry_prefix(ctx.store.prefix).encode()
        while True:
            while not self._noted:
                self._wake.clear()
                await self._wake.wait()
            key, (revision, why) = next(iter(self._noted.items()))
            # Taken off first: a note whose report fails must not come back at the head
            # of the queue on every restart of this body.
            del self._noted[key]
            if not key.startswith(registry):
                continue
            try:
                await self._report(ctx, registry, key, revision, why)
            except errors.StoreError as exc:
                if isinstance(exc, errors.FencedError):
                    raise  # no longer leading: the next leader reads its own notes
                ctx.log.info("cannot report yet; will retry", error=str(exc))
                self._noted.setdefault(key, (revision, why))  # at the back of the queue
                await asyncio.sleep(1.0)

    async def _report(self, ctx: runnable.RunContext, registry: bytes, key: bytes,
                      revision: int, why: str) -> None:
        try:
            rest = key[len(registry):].decode()
        except UnicodeDecodeError:
            rest = ""  # no name Shoal could have given: nothing to name it by
        where = where_from_key(rest, ctx.resolver.lookup) if rest else None
        if where is None:
            ctx.log.info("unreadable value at a key that names no object",
                         etcd_key=key.decode(errors="replace"), error=why)
            return
        info, namespace, name = where
        current = await ctx.store.raw_get(key)
        if current is None:
            return  # deleted meanwhile
        if current.mod_revision != revision:
            obj = codec.decode_at(info, ctx.store.kind_prefix(info), key, current.value,
                                  current.mod_revision)
            if obj is not None:
                return  # fixed meanwhile
            revision = current.mod_revision  # still bad: its listener note will follow
        if self._reported.get(key) == revision:
            return
        ref = f"{info.plural}/{namespace + '/' if namespace else ''}{name}"
        message = (f"{ref} is stored in a form Shoal cannot read ({why}); every "
                   f"controller skips it. Fix: swctl delete {info.plural} {name}"
                   f"{' -n ' + namespace if namespace else ''}, then apply it again")
        stub = resource.new(info.kind, name, namespace)
        try:
            await events.record_event(ctx.store, stub, events.WARNING, REASON, message,
                                      source=NAME)
        except errors.StoreError as exc:
            log.info("could not record event", key=ref, error=str(exc))
            return
        ctx.log.warning("unreadable object reported", key=ref, revision=revision,
                        error=why)
        if len(self._reported) >= MAX_NOTED:
            self._reported.pop(next(iter(self._reported)))
        self._reported[key] = revision


def where_from_key(rest: str, lookup: Callable[[str], kinds.KindInfo]
                   ) -> tuple[kinds.KindInfo, str | None, str] | None:
    """(kind, namespace, name) of ``<plural>/[<namespace>/]<name>`` (the part of a key
    after the registry prefix), or None when it names no kind ``lookup`` knows."""
    plural, _, tail = rest.partition("/")
    try:
        info = lookup(plural)
    except kinds.UnknownKindError:
        return None
    if info.namespaced:
        namespace, _, name = tail.partition("/")
        if not namespace or not name or "/" in name:
            return None
        return info, namespace, name
    if not tail or "/" in tail:
        return None
    return info, None, tail


def controller_spec() -> runnable.RunnableSpec:
    """A fresh reporter (one per controller-manager process)."""
    return UnreadableReporter().spec
