"""Controllers on a real etcd: reconcile contract, error backoff, owned kinds, logging,
status/conditions/events helpers and finalizers."""

from __future__ import annotations

import asyncio
import functools
import io
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import structlog

from shoal.crds import conditions, kinds, resource
from shoal.runtime import events, finalizers, informer, ratelimit, reconcile, status
from shoal.runtime import logging as rt_logging
from shoal.store import client, errors
from tests.helpers import eventually

REG = kinds.Registry.builtin()
SERVICE = REG.by_kind("Service")
TASK = REG.by_kind("Task")
CONFIG = REG.by_kind("Config")


def config(name: str, data: str = "x") -> resource.Resource:
    return resource.new("Config", name, "default", {"data": data})


class Running:
    """A controller running in a background task for the duration of a test."""

    def __init__(self, store: client.Store, info: kinds.KindInfo, fn: reconcile.Reconciler,
                 **kwargs: Any) -> None:
        self.factory = informer.SharedInformerFactory(store)
        self.controller = reconcile.Controller("test-" + info.plural, store, self.factory,
                                               info, fn, **kwargs)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> reconcile.Controller:
        self.task = asyncio.create_task(self.controller.run())
        return self.controller

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.factory.stop()


async def check(fn: Callable[[], bool]) -> bool:
    return fn()


async def stored(store: client.Store, info: kinds.KindInfo, name: str,
                 ) -> resource.Resource | None:
    try:
        return await store.get(info, name)
    except errors.NotFoundError:
        return None


async def test_a_failing_object_backs_off_while_the_others_reconcile(
        store: client.Store) -> None:
    calls: dict[str, list[float]] = {}

    async def reconcile_fn(ctx: reconcile.Context, key: str) -> reconcile.Result | None:
        calls.setdefault(ctx.name, []).append(time.monotonic())
        obj = ctx.get()
        if obj is None:
            return None
        if obj.spec["data"] == "boom":
            raise RuntimeError("this object is broken")
        await ctx.update_status(obj, patch={"seen": obj.spec["data"]})
        return None

    for i in range(5):
        await store.create(CONFIG, config(f"ok{i}", f"v{i}"))
    await store.create(CONFIG, config("bad", "boom"))
    base = 0.01
    async with Running(store, CONFIG, reconcile_fn, workers=3,
                       rate_limiter=lambda: ratelimit.ExponentialBackoff(base, 10.0)) as ctrl:
        for i in range(5):
            await eventually(functools.partial(_status, store, f"ok{i}", "seen", f"v{i}"),
                             timeout=5)
        await eventually(lambda: check(lambda: len(calls.get("bad", [])) >= 6), timeout=5,
                         what="bad object retried")
        # Each retry waited at least its doubled backoff (logging adds to the gaps, so
        # only lower bounds are meaningful).
        gaps = [b - a for a, b in itertools.pairwise(calls["bad"])]
        for i, gap in enumerate(gaps[:5]):
            assert gap >= base * 2 ** i * 0.9, f"retry {i} came too early: {gaps}"
        assert ctrl.queue is not None and ctrl.queue.num_requeues("default/bad") >= 5
        # The failure is on the object for `swctl describe`: one event, counted.
        [warning] = await events.list_events(store, await store.get(CONFIG, "bad"))
        assert warning.spec["type"] == "Warning" and warning.spec["reason"] == "ReconcileError"
        assert warning.spec["message"] == "RuntimeError: this object is broken"
        assert warning.spec["count"] >= 2

        # The loop is alive: new and changed objects still reconcile after the errors.
        await store.create(CONFIG, config("late", "v"))
        await eventually(lambda: _status(store, "late", "seen", "v"), timeout=5)
        ok0 = await store.get(CONFIG, "ok0")
        ok0.spec["data"] = "v0b"
        await store.update(CONFIG, ok0)
        await eventually(lambda: _status(store, "ok0", "seen", "v0b"), timeout=5)

        # Fixing the object ends the retries (and status says so).
        bad = await store.get(CONFIG, "bad")
        bad.spec["data"] = "fixed"
        await store.update(CONFIG, bad)
        await eventually(lambda: _status(store, "bad", "seen", "fixed"), timeout=5)
        ok = await store.get(CONFIG, "ok1")
        assert ok.status["observedGeneration"] == ok.metadata.generation


async def _status(store: client.Store, name: str, field: str, value: object) -> bool:
    obj = await stored(store, CONFIG, name)
    return obj is not None and obj.status.get(field) == value


async def test_requeue_after_calls_again_and_deleted_objects_reconcile_as_absent(
        store: client.Store) -> None:
    seen: list[tuple[str, bool]] = []

    async def reconcile_fn(ctx: reconcile.Context, key: str) -> reconcile.Result | None:
        obj = ctx.get()
        seen.append((key, obj is not None))
        if obj is not None and obj.spec["data"] == "poll":
            return reconcile.Result(requeue_after=0.05)
        return None

    await store.create(CONFIG, config("poller", "poll"))
    await store.create(CONFIG, config("once", "x"))
    async with Running(store, CONFIG, reconcile_fn):
        await eventually(lambda: check(lambda: seen.count(("default/poller", True)) >= 4),
                         timeout=5, what="periodic requeue")
        assert seen.count(("default/once", True)) == 1
        await store.delete(CONFIG, "once")
        await eventually(lambda: check(lambda: ("default/once", False) in seen), timeout=5)


async def test_owned_objects_wake_their_owner_and_custom_mappers_work(
        store: client.Store) -> None:
    woken: list[str] = []

    async def reconcile_fn(ctx: reconcile.Context, key: str) -> None:
        woken.append(key)

    svc = await store.create(SERVICE, resource.new("Service", "web", "default", {}))
    async with Running(store, SERVICE, reconcile_fn,
                       watches=[reconcile.Watch(TASK),
                                reconcile.Watch(CONFIG, lambda o: [f"default/{o.spec['data']}"])]):
        await eventually(lambda: check(lambda: "default/web" in woken), timeout=5)
        woken.clear()
        task = resource.new("Task", "web.1", "default", {"serviceName": "web"})
        task.metadata.ownerReferences.append(resource.owner_reference(svc))
        await store.create(TASK, task)
        await eventually(lambda: check(lambda: "default/web" in woken), timeout=5,
                         what="owner reconciled for a new owned task")
        woken.clear()
        await store.delete(TASK, "web.1")
        await eventually(lambda: check(lambda: "default/web" in woken), timeout=5,
                         what="owner reconciled for a deleted owned task")
        await store.create(CONFIG, config("cfg", "api"))
        await eventually(lambda: check(lambda: "default/api" in woken), timeout=5,
                         what="custom mapper")


async def test_every_reconcile_log_line_carries_key_and_controller(
        store: client.Store) -> None:
    out = io.StringIO()
    rt_logging.configure("debug", json=True, stream=out)
    try:
        async def reconcile_fn(ctx: reconcile.Context, key: str) -> None:
            ctx.log.info("from ctx.log")
            structlog.get_logger("user.code").info("from any logger")
            raise ValueError("nope")

        await store.create(CONFIG, config("logged"))
        async with Running(store, CONFIG, reconcile_fn):
            await eventually(lambda: check(lambda: "reconcile failed" in out.getvalue()),
                             timeout=5)
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    mine = [rec for rec in lines
            if rec["event"] in ("from ctx.log", "from any logger") or
            rec["event"].startswith("reconcile failed")]
    assert {rec["event"] for rec in mine} >= {"from ctx.log", "from any logger",
                                              "reconcile failed; retrying with backoff"}
    for rec in mine:
        assert rec["key"] == "default/logged", rec
        assert rec["controller"] == "test-configs", rec
    failed = next(rec for rec in mine if rec["event"].startswith("reconcile failed"))
    assert "ValueError" in json.dumps(failed["exception"])


async def test_finalizer_keeps_a_deleted_object_until_the_handler_cleans_up(
        store: client.Store) -> None:
    fin = "example.com/cleanup"
    cleaned: list[str] = []

    async def reconcile_fn(ctx: reconcile.Context, key: str) -> None:
        obj = ctx.get()
        if obj is None:
            return
        if finalizers.is_deleting(obj):
            if finalizers.has_finalizer(obj, fin):
                cleaned.append(obj.name)
                await ctx.remove_finalizer(obj, fin)
            return
        obj = await ctx.add_finalizer(obj, fin)
        assert obj is not None
        await ctx.update_status(obj, conditions=[status.Condition("Ready", True, "Set")])
        await ctx.record_event(obj, events.NORMAL, "Prepared", "finalizer in place")

    await store.create(CONFIG, config("f"))
    async with Running(store, CONFIG, reconcile_fn):
        async def ready() -> bool:
            obj = await store.get(CONFIG, "f")
            return fin in obj.metadata.finalizers and conditions.is_true(obj, "Ready")
        await eventually(ready, timeout=5, what="finalizer and condition set")
        obj = await store.get(CONFIG, "f")

        # The handler records the event after the status write that made it ready, so
        # it may land a moment later.
        async def recorded() -> bool:
            return bool(await events.list_events(store, obj))
        await eventually(recorded, timeout=5, what="the Prepared event")
        evs = await events.list_events(store, obj)
        assert [e.spec["reason"] for e in evs] == ["Prepared"]
        assert evs[0].spec["source"] == "test-configs"

        deleting = await store.delete(CONFIG, "f")
        assert deleting is not None and deleting.metadata.deletionTimestamp
        await eventually(lambda: _gone(store, "f"), timeout=5, what="object deleted")
        assert cleaned == ["f"]


async def _gone(store: client.Store, name: str) -> bool:
    return await stored(store, CONFIG, name) is None


async def test_update_status_retries_conflicts_and_keeps_observed_generation(
        store: client.Store) -> None:
    created = await store.create(CONFIG, config("s"))
    stale = created.deepcopy()
    fresh = await store.get(CONFIG, "s")
    fresh.spec["data"] = "v2"  # someone else bumps the generation meanwhile
    await store.update(CONFIG, fresh)

    result = await status.update_status(
        store, CONFIG, stale, patch={"phase": "Ready"},
        conditions=[status.Condition("Available", True, "Up", "all good")])
    assert result is not None
    assert result.spec["data"] == "v2", "the mutation was re-applied to the fresh object"
    assert result.status["phase"] == "Ready"
    assert result.status["observedGeneration"] == 1, "status describes what was reconciled"
    assert conditions.get_condition(result, "Available")["message"] == "all good"  # type: ignore[index]

    current = await status.update_status(store, CONFIG, result, patch={"phase": "Ready"})
    assert current is not None and current.status["observedGeneration"] == 2
    again = await status.update_status(store, CONFIG, current, patch={"phase": "Ready"})
    assert again is current, "an unchanged status writes nothing"
    await store.delete(CONFIG, "s")
    assert await status.update_status(store, CONFIG, current, patch={"phase": "x"}) is None


async def test_events_deduplicate_and_expire_with_a_lease(store: client.Store) -> None:
    obj = await store.create(CONFIG, config("e"))
    first = await events.record_event(store, obj, events.WARNING, "Failed", "disk full", "t")
    second = await events.record_event(store, obj, events.WARNING, "Failed", "disk full", "t")
    other = await events.record_event(store, obj, events.NORMAL, "Started", "ok", "t")
    assert first.name == second.name != other.name
    assert second.spec["count"] == 2
    listed = await events.list_events(store, obj)
    assert sorted((e.spec["reason"], e.spec["count"]) for e in listed) == [
        ("Failed", 2), ("Started", 1)]
    kv = await store.raw_get(store.key(events.event_kind(), first.name, "default"))
    assert kv is not None and kv.lease != 0, "events carry a lease so they expire"
    with pytest.raises(ValueError):
        await events.record_event(store, obj, "Bad", "X", "y")



async def test_events_list_in_the_order_they_happened_whatever_the_writers_clocks(
        store: client.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Found while adding the chaos harness's clock-jump fault: events are stamped by
    # their writer's wall clock, and a controller-manager whose clock an NTP step had put
    # 2 h back listed its newest event first in `describe`, below ones it followed.
    obj = await store.create(CONFIG, config("clocks"))
    await events.record_event(store, obj, events.NORMAL, "Started", "ok", "t")
    behind = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 7200))
    monkeypatch.setattr(resource, "now_rfc3339", lambda: behind)
    await events.record_event(store, obj, events.WARNING, "Killed", "by the stepped one", "t")
    listed = await events.list_events(store, obj)
    assert [e.spec["reason"] for e in listed] == ["Started", "Killed"]
