"""The dashboard's pure parts: records the page draws, the hub's coalescing and fan-out,
the access rule, and the swctl argv an action becomes (and its run, on input argparse
refuses before any store is opened)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from shoal.cli import common
from shoal.cli.dashboard import access, actions, hub, views
from shoal.crds import resource


def obj(kind: str, name: str, namespace: str | None = "default",
        **fields: Any) -> resource.Resource:
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}", "resourceVersion": "1"}
    if namespace:
        meta["namespace"] = namespace
    meta.update(fields.pop("metadata", {}))
    return resource.Resource.from_dict({"apiVersion": "shoal.io/v1", "kind": kind,
                                        "metadata": meta, **fields})


def task(name: str, node: str = "n-0", state: str = "running", desired: str = "running",
         slot: int = 1, **status: Any) -> resource.Resource:
    return obj("Task", name, spec={"serviceName": "web", "slot": slot, "nodeName": node,
                                   "desiredState": desired,
                                   "template": {"image": "busybox"}},
               status={"state": state, **status})


# --- views ---

def test_a_task_record_says_what_service_ps_says() -> None:
    rec = views.task_view(task("web.2.abc", state="failed", slot=2, exitCode=3))
    assert rec["k"] == "default/web.2.abc" and rec["label"] == "web.2"
    assert rec["node"] == "n-0" and rec["state"] == "failed" and rec["active"]
    assert not rec["running"] and rec["ended"]
    assert rec["error"] == "task: non-zero exit (3)"


def test_a_service_record_has_swctls_ports_and_mode() -> None:
    svc = obj("Service", "web", spec={
        "replicas": 4, "template": {"image": "nginx"}, "networks": ["front", {"name": "back"}],
        "endpoint": {"ports": [{"published": 8080, "target": 80, "protocol": "tcp"}]}},
        status={"revision": 2, "update": {"state": "updating", "message": "1/4"},
                "endpoint": {"mode": "vip", "virtualIPs": [
                    {"network": "front", "address": "10.0.1.2"}]}})
    rec = views.service_view(svc)
    assert rec["ports"] == "*:8080->80/tcp" and rec["networks"] == ["front", "back"]
    assert rec["vips"] == {"front": "10.0.1.2"}
    assert (rec["mode"], rec["replicas"], rec["revision"], rec["rollout"]) == (
        "replicated", 4, 2, "updating")


def test_a_node_record_is_cluster_scoped_and_defaults_what_is_missing() -> None:
    rec = views.node_view(obj("Node", "n-1", namespace=None, spec={},
                              metadata={"labels": {"zone": "a"}},
                              status={"state": "ready", "address": "10.0.0.2"}))
    assert rec["k"] == "n-1" and rec["availability"] == "active" and rec["role"] == "worker"
    assert rec["labels"] == {"zone": "a"} and rec["address"] == "10.0.0.2"


def test_an_unreadable_object_becomes_a_bad_record_not_an_exception() -> None:
    broken = obj("Service", "odd", spec={"template": "not-a-map", "replicas": 1})
    broken.status = "not-a-map"  # type: ignore[assignment]
    rec = views.view_of(views.SERVICES, broken)
    assert rec["k"] == "default/odd"  # a record either way; the stream goes on


# --- hub ---

class FakeInformer:
    """An informer's cache and handler calls, without etcd (the hub's pure logic)."""

    def __init__(self, objs: list[resource.Resource] = ()) -> None:  # type: ignore[assignment]
        self.cache = {views.key_of(o): o for o in objs}
        self.handlers: list[Any] = []

    def add_handlers(self, on_add: Any = None, on_update: Any = None,
                     on_delete: Any = None) -> Any:
        self.handlers.append((on_add, on_update, on_delete))
        return lambda: self.handlers.clear()

    def get(self, name: str, namespace: str | None = None) -> resource.Resource | None:
        return self.cache.get(f"{namespace}/{name}" if namespace else name)

    def list(self) -> list[resource.Resource]:
        return list(self.cache.values())

    def put(self, o: resource.Resource) -> None:
        old = self.cache.get(views.key_of(o))
        self.cache[views.key_of(o)] = o
        for on_add, on_update, _ in self.handlers:
            on_update(old, o) if old is not None else on_add(o)

    def drop(self, o: resource.Resource) -> None:
        del self.cache[views.key_of(o)]
        for _, _, on_delete in self.handlers:
            on_delete(o)


def decode(message: bytes) -> tuple[str, Any]:
    head, data = message.decode().split("\n", 1)
    return head.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))


async def test_the_hub_sends_a_snapshot_then_one_coalesced_batch_per_burst() -> None:
    tasks = FakeInformer([task("web.1.a")])
    the_hub = hub.Hub({views.TASKS: tasks}, interval=0.01)  # type: ignore[dict-item]
    runner = asyncio.create_task(the_hub.run())
    try:
        with the_hub.subscribe() as sub:
            kind, snap = decode(sub.queue.get_nowait())
            assert kind == "snapshot" and [r["k"] for r in snap["tasks"]] == ["default/web.1.a"]
            for state in ("assigned", "starting", "running"):  # one key, three changes
                tasks.put(task("web.2.b", state=state, slot=2))
            tasks.drop(task("web.1.a"))
            kind, batch = decode(await asyncio.wait_for(sub.queue.get(), 2))
            assert kind == "delta"
            assert [(r["k"], r["state"]) for r in batch["tasks"]["set"]] == [
                ("default/web.2.b", "running")]
            assert batch["tasks"]["del"] == ["default/web.1.a"]
            assert sub.queue.empty() and the_hub.batches_sent == 1
    finally:
        runner.cancel()
        the_hub.close()


def test_a_subscriber_too_far_behind_is_dropped_not_buffered() -> None:
    the_hub = hub.Hub({views.TASKS: FakeInformer()}, max_backlog=3)  # type: ignore[dict-item]
    with the_hub.subscribe() as sub:
        for _ in range(5):
            the_hub.publish({"tasks": {"set": [], "del": []}})
        assert sub.dropped and the_hub.subscribers == 0
        queued = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
        assert queued[-1] is None  # the stream ends; the browser reconnects for a snapshot


def test_a_kind_added_later_streams_its_changes_and_is_removed_cleanly() -> None:
    the_hub = hub.Hub({})
    greetings = FakeInformer([obj("Greeting", "world", spec={"name": "World"})])
    with the_hub.subscribe() as sub:
        the_hub.custom["x:greetings"] = {"kind": "Greeting", "headers": ["NAME"]}
        the_hub.add_kind("x:greetings", greetings,  # type: ignore[arg-type]
                         lambda o: {"k": views.key_of(o), "cells": [o.name]})
        the_hub.publish_custom()
        greetings.put(obj("Greeting", "moon", spec={"name": "Moon"}))
        batch = the_hub.take_batch()
        assert batch is not None
        assert sorted(r["cells"][0] for r in batch["x:greetings"]["set"]) == ["moon"]
        decode(sub.queue.get_nowait())  # the snapshot
        kind, meta = decode(sub.queue.get_nowait())
        assert kind == "custom" and meta["x:greetings"]["kind"] == "Greeting"
        the_hub.remove_kind("x:greetings")
        assert greetings.handlers == [] and "x:greetings" not in the_hub.snapshot()


# --- access ---

def test_loopback_needs_no_token_but_a_loopback_host_header() -> None:
    rule = access.Access(None)
    assert rule.refusal("127.0.0.1:8080", {}, {}, {}) is None
    assert rule.refusal("localhost:8080", {}, {}, {}) is None
    assert rule.refusal("[::1]:8080", {}, {}, {}) is None
    refusal = rule.refusal("evil.example:8080", {}, {}, {})
    assert refusal is not None and "localhost only" in refusal


def test_other_addresses_need_the_token_in_query_cookie_or_header() -> None:
    rule = access.Access("s3cret")
    assert rule.refusal("10.0.0.1:8080", {}, {}, {}) is not None
    assert rule.refusal("10.0.0.1:8080", {"token": "wrong"}, {}, {}) is not None
    assert rule.refusal("10.0.0.1:8080", {"token": "s3cret"}, {}, {}) is None
    assert rule.refusal("10.0.0.1:8080", {}, {}, {access.COOKIE: "s3cret"}) is None
    assert rule.refusal("x", {}, {"Authorization": "Bearer s3cret"}, {}) is None


def test_actions_need_the_pages_header() -> None:
    assert access.Access.action_refusal({}) is not None
    assert access.Access.action_refusal({access.ACTION_HEADER: "1"}) is None


# --- actions ---

@pytest.mark.parametrize(("body", "argv"), [
    ({"action": "scale", "namespace": "default", "name": "web", "replicas": "5"},
     ["scale", "web=5", "-n", "default", "--detach"]),
    ({"action": "scale", "namespace": "default", "name": "web", "replicas": -1},
     ["scale", "web=-1", "-n", "default", "--detach"]),
    ({"action": "node", "verb": "drain", "name": "n-1"}, ["node", "drain", "n-1"]),
    ({"action": "delete-task", "namespace": "app", "name": "web.1.x"},
     ["delete", "task", "web.1.x", "-n", "app"]),
    ({"action": "rollout", "verb": "undo", "namespace": "default", "name": "web"},
     ["rollout", "undo", "service/web", "-n", "default", "--detach"]),
    ({"action": "rollout", "verb": "pause", "namespace": "default", "name": "web"},
     ["rollout", "pause", "service/web", "-n", "default"]),
])
def test_an_action_is_the_command_a_user_would_type(body: dict[str, Any],
                                                    argv: list[str]) -> None:
    assert actions.argv_for(body) == argv


@pytest.mark.parametrize("body", [
    {"action": "node", "verb": "rm", "name": "n-1"},            # not an action the page has
    {"action": "node", "verb": "drain", "name": "--etcd=x"},    # a value read as a flag
    {"action": "delete-task", "namespace": "default"},          # no name
    {"action": "shell", "name": "x"},
])
def test_requests_the_page_never_sends_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(actions.ActionError):
        actions.argv_for(body)


async def test_an_argparse_refusal_is_reported_as_swctl_prints_it() -> None:
    outcome = await actions.run(["scale", "web=1", "-n", "Bad/Name"], common.GlobalOptions())
    assert not outcome.ok and outcome.errors[0].startswith("error: argument -n/--namespace")
