"""Bytes written straight into etcd under every kind's prefix: random bytes, broken JSON,
JSON of the wrong shape, objects naming another kind or name than their key, mutated valid
objects. Reading them (every list and watch) skips or decodes them and never raises; a
real controller-manager and agent beside them keep reconciling a good service; ``swctl
describe`` says what is wrong with a garbage object it can name, and ``swctl get events``
names the ones nobody can read."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.crds import conditions, kinds
from shoal.store import codec, etcd_server
from shoal.store import etcd as etcd_api
from tests.fuzz import strategies, surfaces
from tests.helpers import eventually
from tests.integration.cli_support import Swctl
from tests.integration.orchestration_support import SERVICES, Cluster

FUZZ = settings.get_profile("fuzz")
BUILTIN = kinds.Registry.builtin()
INFOS = sorted(BUILTIN.all(), key=lambda i: i.plural)


def _key(info: kinds.KindInfo, prefix: str, name: str) -> bytes:
    return codec.object_key(prefix, info, name, "default" if info.namespaced else None)


@settings(FUZZ, max_examples=400)
@given(st.data())
def test_reading_any_stored_value_never_raises(data: st.DataObject) -> None:
    """What every list and watch does with a value (decode or skip) and a deleted key
    (name it from the key), for values and keys of every kind."""
    info = data.draw(st.sampled_from(INFOS))
    name = data.draw(st.sampled_from(["web", "x", "ünï", "a.b"]))
    value = data.draw(strategies.etcd_value(info.kind, name,
                                            "default" if info.namespaced else None))
    key = _key(info, "/p", name) if data.draw(st.booleans()) else (
        codec.kind_prefix("/p", info) + data.draw(st.binary(max_size=12)))
    verdict = surfaces.decode_and_key(info, "/p", key, value)
    assert not verdict.bad, verdict.detail


def _garbage(count: int) -> list[tuple[kinds.KindInfo, str, bytes]]:
    """``count`` generated values per kind, the same on every run."""
    out: list[tuple[kinds.KindInfo, str, bytes]] = []
    for info in INFOS:
        values: list[bytes] = []
        ns = "default" if info.namespaced else None

        @settings(FUZZ, max_examples=count)
        @given(strategies.etcd_value(info.kind, "NAME", ns))
        def collect(value: bytes) -> None:
            values.append(value)  # noqa: B023 (run at once, inside this iteration)
        collect()
        # The key's name is known only once the case is kept (the draws must not depend
        # on how many came before): written in afterwards.
        for value in values[-count:]:
            name = f"junk-{len(out)}"
            out.append((info, name, value.replace(b'"NAME"', f'"{name}"'.encode())))
    return out


@pytest.fixture
async def cluster(etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    async with Cluster.open(etcd.url, prefix, tmp_path) as c:
        yield c


async def test_controllers_and_agents_carry_on_beside_garbage(
        cluster: Cluster, etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> None:
    store = cluster.store
    agent = cluster.start_agent("b", count=2)
    manager = cluster.start_manager()
    await cluster.wait_ready(["b-0", "b-1"])
    await cluster.apply("good", {"replicas": 2, "template": {"image": "busybox"}})
    await cluster.wait_running("good", 2)

    garbage = _garbage(6)
    for info, name, value in garbage:
        await store.raw_put(_key(info, prefix, name), value)
    # Keys no store would write: not UTF-8, and a value naming another object.
    odd = codec.kind_prefix(prefix, SERVICES, "default") + b"\xff\xfe"
    await store.raw_put(odd, b"{}")
    good_doc = (await store.raw_get(store.key(SERVICES, "good", "default")))
    assert good_doc is not None
    await store.raw_put(store.key(SERVICES, "impostor", "default"), good_doc.value)
    await store.raw_put(store.key(SERVICES, "nonsense", "default"), json.dumps({
        "apiVersion": "shoal.io/v1", "kind": "Service",
        "metadata": {"name": "nonsense", "namespace": "default"},
        "spec": {"replicas": "lots", "template": {"image": "busybox"}}}).encode())
    # Readable, but nothing admission would take; one with conditions that are not a list.
    bad_specs = {"networks": {"subnet": "not-a-cidr", "driver": 7},
                 "secrets": {"data": ["x"]}, "configs": {"data": {"a": 1}, "extra": True}}
    for plural, spec in bad_specs.items():
        info = BUILTIN.lookup(plural)
        meta = {"name": "bad", **({"namespace": "default"} if info.namespaced else {})}
        await store.raw_put(_key(info, prefix, "bad"), json.dumps({
            "apiVersion": "shoal.io/v1", "kind": info.kind, "metadata": meta,
            "spec": spec, "status": {"conditions": "garbage"}}).encode())
    # Watches see deletes too, of well-formed keys and odd ones.
    for info, name, _ in random.Random(7).sample(garbage, 12):
        await store.etcd.txn([], [etcd_api.op_delete(_key(info, prefix, name))])
    await store.etcd.txn([], [etcd_api.op_delete(odd)])

    # Everything keeps working: a scale and a new service converge, nobody died.
    await cluster.scale("good", 4)
    await cluster.wait_running("good", 4)
    await cluster.apply("after", {"replicas": 1, "template": {"image": "busybox"}})
    await cluster.wait_running("after", 1)
    assert manager.popen.poll() is None, "controller-manager died"
    assert agent.popen.poll() is None, "agent died"
    # The impostor is not a second "good": still exactly the 4 tasks the scale asked for.
    assert len(await cluster.current("good")) == 4

    # describe names what is wrong with each garbage object it can name.
    async def nonsense_invalid() -> bool:
        svc = await store.get(SERVICES, "nonsense", "default")
        cond = conditions.get_condition(svc, "Valid")
        return bool(cond and cond["status"] == "False")
    await eventually(nonsense_invalid, 10, what="nonsense service marked invalid")
    swctl = Swctl(etcd.url, prefix, tmp_path)
    shown = swctl("describe", "service", "nonsense").stdout
    assert "Valid" in shown, shown
    assert 'spec.replicas: must be an integer, got string "lots"' in shown, shown
    refused = swctl("describe", "service", "impostor", expect=1).stderr
    assert "services/default/impostor is stored in a form Shoal cannot read" in refused, refused
    assert "names itself 'good'" in refused, refused
    assert "Traceback" not in refused
    # ...and `get events` shows it where users watch for trouble, with how to fix it.

    async def reported() -> str:
        shown = swctl("get", "events", "-o", "yaml").stdout
        return shown if "services/default/impostor is stored in a form" in shown else ""
    shown = await eventually(reported, 10, what="Unreadable event for the impostor")
    assert "reason: Unreadable" in shown and "swctl delete services impostor -n default" \
        in shown, shown
    for plural in bad_specs:
        info = BUILTIN.lookup(plural)

        async def marked(info: kinds.KindInfo = info) -> bool:
            obj = await store.get(info, "bad", "default" if info.namespaced else None)
            cond = conditions.get_condition(obj, "Valid")
            return bool(cond and cond["status"] == "False")
        await eventually(marked, 10, what=f"{plural}/bad marked invalid")
        shown = swctl("describe", plural, "bad").stdout
        assert "InvalidSpec" in shown and "spec." in shown, shown
    for info, name, value in garbage:
        if info.kind == "Service" and not _decodes(value, info, prefix, name):
            broken = swctl("describe", "service", name, expect=1).stderr
            unreadable = f"services/default/{name} is stored in a form Shoal cannot read"
            assert unreadable in broken, broken
            break


def _decodes(value: bytes, info: kinds.KindInfo, prefix: str, name: str) -> bool:
    return codec.decode_at(info, codec.kind_prefix(prefix, info), _key(info, prefix, name),
                           value, 1) is not None
