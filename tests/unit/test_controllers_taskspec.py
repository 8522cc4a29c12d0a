"""What a task records and when it is dirty (``controllers/taskspec.py``)."""

from __future__ import annotations

from typing import Any

from shoal.controllers import taskspec
from shoal.crds.resource import Resource
from tests.unit.orchestrator_support import service, task


def test_a_task_is_dirty_when_a_recorded_section_differs() -> None:
    svc = service(generation=2)
    same = task(1)
    assert not taskspec.is_dirty(same, svc)  # a replicas-only change: same template
    assert taskspec.is_dirty(task(1, template={"image": "y"}), svc)
    for section, value in (("placement", {"constraints": ["node.role==worker"]}),
                           ("forceUpdate", 1), ("networks", ["backend"]),
                           ("endpoint", {"ports": [{"target": 80, "published": 8080}]})):
        other = service(generation=2)
        other.spec[section] = value
        assert taskspec.is_dirty(same, other), section
        recorded = task(1)
        recorded.spec.update(taskspec.task_copy(other))
        assert not taskspec.is_dirty(recorded, other), section
    plain = service(generation=2)
    plain.spec["endpoint"] = {"mode": "vip"}
    assert not taskspec.is_dirty(same, plain)  # absent and empty compare equal
    assert not taskspec.is_dirty(task(1, generation=2, template={"image": "y"}), svc)


def test_aliases_count_but_the_long_form_of_a_bare_name_does_not() -> None:
    def attached(networks: list[Any]) -> Resource:
        svc = service(generation=2)
        svc.spec["networks"] = networks
        return svc

    recorded = task(1)
    recorded.spec.update(taskspec.task_copy(attached(["a"])))
    assert not taskspec.is_dirty(recorded, attached([{"name": "a"}]))
    assert taskspec.is_dirty(recorded, attached([{"name": "a", "aliases": ["db"]}]))


def test_turning_rebalancing_on_restarts_nothing() -> None:
    svc = service(generation=2, constraints=["node.role==worker"])
    recorded = task(1)
    recorded.spec.update(taskspec.task_copy(svc))
    svc.spec["placement"]["rebalance"] = {"enabled": True}
    assert not taskspec.is_dirty(recorded, svc)
    assert "rebalance" not in taskspec.task_copy(svc)["placement"]
    assert "rebalance" not in taskspec.revision_spec(svc)["placement"]


def test_new_task_records_the_spec_and_names() -> None:
    svc = service(generation=4)
    svc.metadata.uid = "u-1"
    t = taskspec.new_task(svc, "web.2.3", 2, None, "slot 2 of 3", {"k": "v"})
    assert (t.spec["slot"], t.spec["serviceGeneration"], t.spec["desiredState"]) == (
        2, 4, "running")
    assert t.status["state"] == "pending" and t.metadata.annotations == {"k": "v"}
    assert taskspec.sequence_of(t) == 3
    assert taskspec.next_name("web", 2, [t, task(2, 1)]) == "web.2.4"
