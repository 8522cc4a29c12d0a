"""shoal/cli/describe.py: a Service's update and revisions as sections, not raw status."""

from __future__ import annotations

import datetime

from shoal.cli import describe
from shoal.crds import kinds
from tests.unit.cli_support import revision, service

NOW = datetime.datetime(2024, 5, 1, 12, 5, 0, tzinfo=datetime.UTC)


def test_service_update_and_last_revisions() -> None:
    svc = service(update={"state": "completed", "message": "update completed",
                          "startedAt": "2024-05-01T12:00:00Z",
                          "completedAt": "2024-05-01T12:01:00Z", "updatedTasks": 3,
                          "totalTasks": 3, "generation": 3},
                  revisions=[revision(n, f"nginx:{n}") for n in range(1, 8)], revision=7)
    info = kinds.Registry.builtin().lookup("services")
    text = describe.render(info, svc, [], NOW)
    lines = text.splitlines()
    assert "Update:" in lines and "  State:            completed" in lines
    assert "  Tasks:            3 of 3 updated" in lines
    assert "Revisions: (last 5 of 7; swctl rollout history service/web)" in lines
    table = lines[lines.index("Revisions: (last 5 of 7; swctl rollout history service/web)")
                  + 1:]
    assert table[0].split() == ["REVISION", "CHANGE-CAUSE", "IMAGE", "CREATED"]
    assert table[1].split()[0] == "3" and table[5].split()[:2] == ["7", "(current)"]
    assert "nginx:1" not in text.split("Revisions:")[1]
    assert "revisions:" not in text  # not dumped in the Status block too


def test_a_service_without_updates_says_none() -> None:
    info = kinds.Registry.builtin().lookup("services")
    lines = describe.render(info, service(), [], NOW).splitlines()
    assert "Update:             <none>" in lines
    assert "Revisions:          <none>" in lines


def test_object_with_garbage_where_lists_belong_is_still_described() -> None:
    """Fuzzing found it: describe (and get's AGE column) of an object written straight
    into etcd with non-list conditions, non-map owner references or a stamp that is not
    a string raised, so the one command that should say what is wrong with it failed."""
    import json

    from shoal.cli import printers
    from shoal.store import codec

    info = kinds.Registry.builtin().lookup("services")
    svc = codec.decode(json.dumps({
        "kind": "Service", "apiVersion": "shoal.io/v1",
        "metadata": {"name": "junk", "namespace": "default", "ownerReferences": [5],
                     "creationTimestamp": ["2024"]},
        "spec": {}, "status": {"conditions": [1, {"type": "Valid", "status": "False",
                                                  "message": "spec.replicas: bad"}]}}
                                 ).encode(), 5)
    text = describe.render(info, svc, [], NOW)
    assert "not a condition: 1" in text and "spec.replicas: bad" in text, text
    assert "Owned By:" in text
    assert printers.age(["2024"], NOW) == printers.NONE
    assert "junk" in printers.format_objects(info, [svc], "table", single=False)
    svc.status["conditions"] = "broken"
    assert "Conditions:" in describe.render(info, svc, [], NOW)
