"""crds.conditions on objects written straight into etcd, whose conditions may be anything."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.crds import conditions, resource


@pytest.mark.parametrize("stored", ["garbage", 5, {"type": "Valid"}, [1, "x"], None])
def test_a_condition_can_be_set_whatever_the_stored_conditions_hold(stored: Any) -> None:
    """Fuzzing found it: set_condition iterated whatever ``status.conditions`` held, so
    the controller marking a hand-written object invalid (the one way ``describe`` can
    say what is wrong with it) raised instead, and retried for ever."""
    obj = resource.new("Service", "junk", "default", {})
    obj.status["conditions"] = stored
    assert conditions.get_condition(obj, "Valid") is None
    assert conditions.set_condition(obj, "Valid", False, "InvalidSpec", "spec.x: bad")
    cond = conditions.get_condition(obj, "Valid")
    assert cond is not None and cond["message"] == "spec.x: bad"


def test_conditions_that_are_conditions_are_kept() -> None:
    obj = resource.new("Service", "junk", "default", {})
    obj.status["conditions"] = [{"type": "Ready", "status": "True"}, 7]
    conditions.set_condition(obj, "Valid", True)
    assert [c["type"] for c in obj.status["conditions"]] == ["Ready", "Valid"]
