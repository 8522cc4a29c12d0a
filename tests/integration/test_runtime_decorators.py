"""Kopf-style decorators on a real etcd: create/update/delete/timer/reconcile semantics,
their persistence across restarts, and the manager running zero or more controllers."""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shoal.crds import kinds, resource
from shoal.runtime import cas, decorators, manager, reconcile
from shoal.store import client, errors, etcd_server
from tests.helpers import eventually

CONFIG = kinds.Registry.builtin().by_kind("Config")


class Manager:
    """run_controllers for a registry, restartable, in a background task."""

    def __init__(self, store: client.Store, registry: decorators.OperatorRegistry) -> None:
        self.store = store
        self.registry = registry
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(manager.run_controllers(
            self.store, self.registry.controller_specs(), "test-identity"))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None


@pytest.fixture
async def registry(store: client.Store) -> AsyncIterator[tuple[decorators.On, Manager]]:
    reg = decorators.OperatorRegistry()
    mgr = Manager(store, reg)
    yield decorators.On(reg), mgr
    await mgr.stop()


async def true(value: bool) -> bool:
    return value


async def get(store: client.Store, name: str) -> resource.Resource | None:
    try:
        return await store.get(CONFIG, name)
    except errors.NotFoundError:
        return None


async def test_create_and_update_handlers_fire_once_per_object_and_spec_change(
        store: client.Store, registry: tuple[decorators.On, Manager]) -> None:
    on, mgr = registry
    created: list[str] = []
    updated: list[tuple[str, str]] = []

    @on.create("configs")
    async def made(obj: resource.Resource, ctx: reconcile.Context) -> dict[str, Any]:
        created.append(obj.name)
        return {"createdFrom": obj.spec["data"]}

    @on.update("cfg")  # any name of the kind works
    def changed(obj: resource.Resource, ctx: reconcile.Context) -> None:  # sync is fine too
        updated.append((obj.name, obj.spec["data"]))

    await store.create(CONFIG, resource.new("Config", "a", "default", {"data": "1"}))
    mgr.start()

    async def created_status() -> bool:
        obj = await get(store, "a")
        return obj is not None and obj.status.get("createdFrom") == "1"
    await eventually(created_status, timeout=5)
    marker = decorators.ANNOTATION_PREFIX + "cfg.changed"
    await eventually(lambda: _annotated(store, "a", marker, "1"), timeout=5,
                     what="update handler recorded its baseline")
    assert created == ["a"] and updated == []

    # The handlers write to the object too: change it with CAS retry, as any client must.
    def set_data(o: resource.Resource) -> None:
        o.spec["data"] = "2"

    def add_note(o: resource.Resource) -> None:
        o.status["note"] = "x"

    await cas.mutate(store, CONFIG, await store.get(CONFIG, "a"), set_data)
    await eventually(lambda: true(updated == [("a", "2")]), timeout=5)

    # Status-only writes are not updates; a restart repeats neither handler.
    await cas.mutate(store, CONFIG, await store.get(CONFIG, "a"), add_note)
    await mgr.stop()
    mgr.start()
    await store.create(CONFIG, resource.new("Config", "b", "default", {"data": "1"}))
    await eventually(lambda: true(created == ["a", "b"]), timeout=5)
    await eventually(lambda: _annotated(store, "b", marker, "1"), timeout=5)
    assert updated == [("a", "2")]


async def _annotated(store: client.Store, name: str, key: str, value: str) -> bool:
    obj = await get(store, name)
    return obj is not None and obj.metadata.annotations.get(key) == value


async def test_delete_handler_runs_before_the_object_goes_away(
        store: client.Store, registry: tuple[decorators.On, Manager]) -> None:
    on, mgr = registry
    deleted: list[str] = []
    fail_once = {"d": True}

    @on.delete("configs")
    async def cleanup(obj: resource.Resource, ctx: reconcile.Context) -> None:
        if fail_once.pop(obj.name, False):
            raise RuntimeError("clean-up failed, try again")
        deleted.append(obj.name)

    await store.create(CONFIG, resource.new("Config", "d", "default", {"data": "1"}))
    mgr.start()
    fin = decorators.ANNOTATION_PREFIX + "configs.cleanup"

    async def has_finalizer() -> bool:
        obj = await get(store, "d")
        return obj is not None and fin in obj.metadata.finalizers
    await eventually(has_finalizer, timeout=5)

    pending = await store.delete(CONFIG, "d")
    assert pending is not None and pending.metadata.deletionTimestamp
    await eventually(lambda: _absent(store, "d"), timeout=5, what="object deleted")
    assert deleted == ["d"] and not fail_once


async def _absent(store: client.Store, name: str) -> bool:
    return await get(store, name) is None


async def test_timer_fires_on_its_interval_not_on_its_own_writes(
        store: client.Store, registry: tuple[decorators.On, Manager]) -> None:
    on, mgr = registry
    ticks: list[float] = []
    interval = 0.2

    @on.timer("configs", interval=interval)
    async def tick(obj: resource.Resource, ctx: reconcile.Context) -> dict[str, Any]:
        ticks.append(time.monotonic())
        return {"ticks": len(ticks)}  # a status write every time

    await store.create(CONFIG, resource.new("Config", "t", "default", {"data": "1"}))
    mgr.start()
    await eventually(lambda: true(len(ticks) >= 4), timeout=5, what="four ticks")
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert min(gaps) >= interval * 0.9, f"timer fired early (own writes?): {gaps}"


async def test_reconcile_handler_can_requeue_and_skips_deleting_objects(
        store: client.Store, registry: tuple[decorators.On, Manager]) -> None:
    on, mgr = registry
    calls: list[str] = []
    saw_deleting: list[str] = []

    @on.reconcile("configs", workers=2)
    async def level(obj: resource.Resource, ctx: reconcile.Context,
                    ) -> reconcile.Result | dict[str, Any]:
        calls.append(obj.name)
        if obj.metadata.deletionTimestamp:
            saw_deleting.append(obj.name)
        if obj.spec["data"] == "again" and calls.count(obj.name) < 3:
            return reconcile.Result(requeue_after=0.01)
        return {"done": True}

    await store.create(CONFIG, resource.new("Config", "r", "default", {"data": "again"}))
    mgr.start()

    async def done(name: str) -> bool:
        obj = await get(store, name)
        return obj is not None and obj.status.get("done") is True
    await eventually(lambda: done("r"), timeout=5)
    assert calls.count("r") >= 3
    held = resource.new("Config", "held", "default", {"data": "x"})
    held.metadata.finalizers = ["someone.else/keep"]
    await store.create(CONFIG, held)
    await eventually(lambda: done("held"), timeout=5)
    await store.delete(CONFIG, "held")
    obj = await store.get(CONFIG, "held")
    obj.metadata.labels["touch"] = "1"
    await store.update(CONFIG, obj)  # another event for the deleting object
    # Events are handled in order: once a later object is reconciled, so were those.
    await store.create(CONFIG, resource.new("Config", "probe", "default", {"data": "x"}))
    await eventually(lambda: done("probe"), timeout=5)
    assert saw_deleting == []


def test_registry_rejects_duplicate_names_and_bad_timers() -> None:
    reg = decorators.OperatorRegistry()
    on = decorators.On(reg)

    @on.reconcile("configs")
    async def same(obj: resource.Resource, ctx: reconcile.Context) -> None:
        pass
    with pytest.raises(ValueError, match="already registered"):
        on.reconcile("configs")(same)
    with pytest.raises(ValueError, match="interval"):
        on.timer("configs", interval=0)
    assert [s.name for s in reg.controller_specs()] == ["configs.same"]


async def test_manager_with_no_controllers_idles_until_cancelled(
        etcd: etcd_server.EtcdServer, prefix: str) -> None:
    port = etcd_server.free_port()
    task = asyncio.create_task(manager.run_manager(etcd.url, prefix, [], "idle",
                                                   metrics_port=port))

    def scrape() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    async def serving() -> bool:
        return await asyncio.to_thread(scrape)
    try:
        await eventually(serving, timeout=5)
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
