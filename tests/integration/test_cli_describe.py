"""``swctl describe``: metadata, spec, status and a conditions table."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.crds import conditions, kinds
from shoal.runtime import events
from shoal.store import client, etcd_server
from tests.integration.cli_support import Swctl, service


@pytest.fixture
def swctl(etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> Swctl:
    return Swctl(etcd.url, prefix, tmp_path)


async def test_describe_service(swctl: Swctl, store: client.Store) -> None:
    swctl("apply", "-d", "-f", str(swctl.write("web.yaml", service("web", 2))))
    info = kinds.Registry.builtin().lookup("services")
    obj = await store.get(info, "web")
    obj.status["runningTasks"] = 1
    conditions.set_condition(obj, "Available", False, "NotEnoughTasks", "1 of 2 tasks running")
    obj = await store.update(info, obj)
    await events.record_event(store, obj, events.WARNING, "FailedScheduling",
                              "no node satisfies node.labels.zone==a", source="scheduler")

    out = swctl("describe", "svc", "web").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["Name:", "web"]
    assert lines[1].split() == ["Namespace:", "default"]
    assert "Labels:             app=web,tier=front" in lines
    spec = lines.index("Spec:")
    assert "  replicas: 2" in lines[spec:]
    assert "  runningTasks: 1" in lines[lines.index("Status:"):]
    cond = lines.index("Conditions:")
    assert lines[cond + 1].split() == ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]
    assert lines[cond + 2].split()[:3] == ["Available", "False", "NotEnoughTasks"]
    assert lines[cond + 2].endswith("1 of 2 tasks running")
    ev = lines.index("Events:")
    assert lines[ev + 1].split() == ["TYPE", "REASON", "AGE", "FROM", "MESSAGE"]
    assert lines[ev + 2].split()[:2] == ["Warning", "FailedScheduling"]
    assert lines[ev + 2].split()[3] == "scheduler"
    assert lines[ev + 2].endswith("no node satisfies node.labels.zone==a")
    err = swctl("describe", "svc", "nope", expect=1).stderr
    assert err.startswith('error: services "nope" not found')


async def test_describe_and_events_in_a_stack_named_the_docker_way(
        swctl: Swctl, store: client.Store) -> None:
    # A stack (namespace) as compose users name them: my_app.v1.
    swctl("apply", "-d", "-n", "my_app.v1", "-f", str(swctl.write("web.yaml", service("web"))))
    info = kinds.Registry.builtin().lookup("services")
    obj = await store.get(info, "web", "my_app.v1")
    await events.record_event(store, obj, events.WARNING, "FailedScheduling",
                              "no node satisfies node.labels.zone==a", source="scheduler")

    # swctl describe service/web -n my_app.v1
    lines = swctl("describe", "service/web", "-n", "my_app.v1").stdout.splitlines()
    assert lines[1].split() == ["Namespace:", "my_app.v1"]
    ev = lines.index("Events:")
    assert lines[ev + 2].split()[:2] == ["Warning", "FailedScheduling"]
    # swctl get events -n my_app.v1: the event lives in the object's stack, not in default.
    assert "FailedScheduling" in swctl("get", "events", "-n", "my_app.v1").stdout
    assert "FailedScheduling" not in swctl("get", "events").stdout
    err = swctl("describe", "service/web", expect=1).stderr
    assert err.startswith('error: services "web" not found')


async def test_describe_ignores_an_event_about_nothing(swctl: Swctl,
                                                       store: client.Store) -> None:
    """Fuzzing found it: an Event written straight into etcd whose involvedObject is not a
    map made every describe in its namespace fail with an internal error."""
    import json

    swctl("apply", "-f", "-", "--detach", input=service("web"))
    junk = {"apiVersion": "shoal.io/v1", "kind": "Event",
            "metadata": {"name": "junk", "namespace": "default"},
            "spec": {"involvedObject": ["Service", "web"], "reason": "Odd"}}
    info = kinds.Registry.builtin().lookup("events")
    await store.raw_put(store.key(info, "junk", "default"), json.dumps(junk).encode())
    shown = swctl("describe", "service", "web").stdout
    assert "Name:" in shown and "web" in shown and "Odd" not in shown, shown
