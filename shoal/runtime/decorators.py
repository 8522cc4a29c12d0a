"""Kopf-style decorators: a few lines of Python per handler, on the same machinery.

Each decorated function becomes one controller (its own queue, workers and leader
lease, named ``<kind>.<function>`` unless ``name=`` says otherwise) whose reconcile
adapts the level-triggered contract to the handler's event:

- ``@on.reconcile(kind)``: called with every live object whenever it (or an owned object)
  changes; the classic level-triggered handler.
- ``@on.create(kind)``: once per object. ``@on.update(kind)``: once per spec change
  (``generation``) after the object was first seen. Progress is kept in an annotation on
  the object (``handlers.shoal.io/<controller>: "<generation>"``), written in the same
  transaction as the handler's status, so a restart neither skips nor repeats a handled
  generation — except that a crash between the handler and that write repeats the call,
  so handlers must be idempotent (at-least-once, as in kopf).
- ``@on.delete(kind)``: puts a finalizer (``handlers.shoal.io/<controller>``) on every
  object and calls the handler when deletion is requested; the object goes away once
  the handler returns.
- ``@on.timer(kind, interval=s)``: called every ``s`` seconds per live object.

A handler is ``fn(obj, ctx)`` (sync or async). ``obj`` is a private copy; ``ctx`` is the
reconcile :class:`~shoal.runtime.reconcile.Context`. A returned mapping is merged into
``status`` together with ``status.observedGeneration`` (nothing is written if nothing
changed); a returned :class:`~shoal.runtime.reconcile.Result` requeues. Objects being
deleted are only passed to delete handlers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from shoal.crds import resource
from shoal.runtime import cas, finalizers, reconcile

HandlerReturn = Mapping[str, Any] | reconcile.Result | None
Handler = Callable[[resource.Resource, reconcile.Context],
                   Awaitable[HandlerReturn] | HandlerReturn]
F = TypeVar("F", bound=Callable[..., Any])

ANNOTATION_PREFIX = "handlers.shoal.io/"
EVENTS = ("reconcile", "create", "update", "delete", "timer")


@dataclasses.dataclass(frozen=True)
class HandlerSpec:
    event: str
    kind: str
    fn: Handler
    name: str
    interval: float | None = None
    workers: int = 1
    owns: tuple[str, ...] = ()


class OperatorRegistry:
    """The handlers of one operator; ``controller_specs`` turns them into controllers."""

    def __init__(self) -> None:
        self.handlers: list[HandlerSpec] = []

    def register(self, spec: HandlerSpec) -> None:
        if spec.event not in EVENTS:
            raise ValueError(f"unknown handler event {spec.event!r}; use one of {EVENTS}")
        if any(h.name == spec.name for h in self.handlers):
            raise ValueError(f'a handler named "{spec.name}" is already registered; pass '
                             "name= to tell them apart")
        self.handlers.append(spec)

    def controller_specs(self) -> list[reconcile.ControllerSpec]:
        return [reconcile.ControllerSpec(name=h.name, kind=h.kind, reconcile=_adapt(h),
                                         workers=h.workers, owns=h.owns)
                for h in self.handlers]

    def __len__(self) -> int:
        return len(self.handlers)


class On:
    """The ``@on.<event>(kind)`` decorators, registering into one registry."""

    def __init__(self, registry: OperatorRegistry) -> None:
        self.registry = registry

    def _decorator(self, event: str, kind: str, name: str | None, workers: int,
                   interval: float | None = None, owns: Sequence[str] = (),
                   ) -> Callable[[F], F]:
        def register(fn: F) -> F:
            self.registry.register(HandlerSpec(
                event=event, kind=kind, fn=fn, name=name or f"{kind}.{fn.__name__}",
                interval=interval, workers=workers, owns=tuple(owns)))
            return fn
        return register

    def reconcile(self, kind: str, *, name: str | None = None, workers: int = 1,
                  owns: Sequence[str] = ()) -> Callable[[F], F]:
        """Level-triggered handler for every live object of ``kind`` (and owned kinds)."""
        return self._decorator("reconcile", kind, name, workers, owns=owns)

    def create(self, kind: str, *, name: str | None = None,
               workers: int = 1) -> Callable[[F], F]:
        return self._decorator("create", kind, name, workers)

    def update(self, kind: str, *, name: str | None = None,
               workers: int = 1) -> Callable[[F], F]:
        return self._decorator("update", kind, name, workers)

    def delete(self, kind: str, *, name: str | None = None,
               workers: int = 1) -> Callable[[F], F]:
        return self._decorator("delete", kind, name, workers)

    def timer(self, kind: str, *, interval: float, name: str | None = None,
              workers: int = 1) -> Callable[[F], F]:
        if interval <= 0:
            raise ValueError(f"timer interval must be > 0 seconds, got {interval}")
        return self._decorator("timer", kind, name, workers, interval=interval)


default_registry = OperatorRegistry()
on = On(default_registry)


# --- adapters from handler events to the reconcile contract ---

async def _call(fn: Handler, obj: resource.Resource, ctx: reconcile.Context) -> HandlerReturn:
    result = fn(obj.deepcopy(), ctx)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _finish(ctx: reconcile.Context, obj: resource.Resource, returned: HandlerReturn,
                  annotation: tuple[str, str] | None = None) -> reconcile.Result | None:
    """Write the handler's status and the progress annotation in one CAS write."""
    patch = dict(returned) if isinstance(returned, Mapping) else None
    if patch is not None or annotation is not None:
        generation = obj.metadata.generation

        def apply(o: resource.Resource) -> None:
            if patch is not None:
                o.status.update(patch)
                o.status["observedGeneration"] = generation
            if annotation is not None:
                o.metadata.annotations[annotation[0]] = annotation[1]
        await cas.mutate(ctx.store, ctx.info, obj, apply)
    return returned if isinstance(returned, reconcile.Result) else None


def _live(ctx: reconcile.Context) -> resource.Resource | None:
    obj = ctx.get()
    if obj is None or finalizers.is_deleting(obj):
        return None
    return obj


def _adapt(spec: HandlerSpec) -> reconcile.Reconciler:
    fn = spec.fn
    marker = ANNOTATION_PREFIX + spec.name

    async def on_reconcile(ctx: reconcile.Context, key: str) -> reconcile.Result | None:
        obj = _live(ctx)
        if obj is None:
            return None
        return await _finish(ctx, obj, await _call(fn, obj, ctx))

    async def on_create(ctx: reconcile.Context, key: str) -> reconcile.Result | None:
        obj = _live(ctx)
        if obj is None or marker in obj.metadata.annotations:
            return None
        returned = await _call(fn, obj, ctx)
        return await _finish(ctx, obj, returned, (marker, str(obj.metadata.generation)))

    async def on_update(ctx: reconcile.Context, key: str) -> reconcile.Result | None:
        obj = _live(ctx)
        if obj is None:
            return None
        generation = obj.metadata.generation
        handled = obj.metadata.annotations.get(marker)
        if handled is None:
            # First sight: remember the baseline; only later spec changes are updates.
            return await _finish(ctx, obj, None, (marker, str(generation)))
        if _as_int(handled) >= generation:
            return None
        returned = await _call(fn, obj, ctx)
        return await _finish(ctx, obj, returned, (marker, str(generation)))

    async def on_delete(ctx: reconcile.Context, key: str) -> reconcile.Result | None:
        obj = ctx.get()
        if obj is None:
            return None
        if not finalizers.is_deleting(obj):
            if not finalizers.has_finalizer(obj, marker):
                await finalizers.add_finalizer(ctx.store, ctx.info, obj, marker)
            return None
        if not finalizers.has_finalizer(obj, marker):
            return None
        returned = await _call(fn, obj, ctx)
        await finalizers.remove_finalizer(ctx.store, ctx.info, obj, marker)
        return returned if isinstance(returned, reconcile.Result) else None

    # Timers are driven by time, not by changes: a change (including the timer's own
    # status write) must not make it fire early, so each key remembers when it is due.
    due: dict[str, float] = {}
    interval = spec.interval or 0.0

    async def on_timer(ctx: reconcile.Context, key: str) -> reconcile.Result | None:
        obj = _live(ctx)
        if obj is None:
            due.pop(key, None)
            return None
        now = asyncio.get_running_loop().time()
        next_due = due.get(key, now)
        if now < next_due:
            return reconcile.Result(requeue_after=next_due - now)
        due[key] = now + interval
        returned = await _call(fn, obj, ctx)
        result = await _finish(ctx, obj, returned)
        return result or reconcile.Result(requeue_after=interval)

    adapters: dict[str, reconcile.Reconciler] = {
        "reconcile": on_reconcile, "create": on_create, "update": on_update,
        "delete": on_delete, "timer": on_timer,
    }
    return adapters[spec.event]


def _as_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0
