"""When the rotation controller records digests and when it rolls a service."""

from __future__ import annotations

import json

from shoal.controllers.rotation.decide import Decision, decide
from shoal.crds import mountdigests, resource


def service(recorded: dict[str, str] | None = None, secrets: tuple[str, ...] = ("db",),
            configs: tuple[str, ...] = ()) -> resource.Resource:
    tpl = {"image": "x", "secrets": [{"source": s} for s in secrets],
           "configs": [{"source": c} for c in configs]}
    svc = resource.new("Service", "web", "default", {"template": tpl})
    if recorded is not None:
        svc.metadata.annotations[mountdigests.MOUNTED_DIGESTS] = json.dumps(recorded)
    return svc


def test_first_sight_records_without_rolling() -> None:
    got = decide(service(), {"secret/db": "d1"})
    assert got == Decision(annotation='{"secret/db":"d1"}')


def test_unchanged_digests_do_nothing() -> None:
    assert decide(service({"secret/db": "d1"}), {"secret/db": "d1"}) is None


def test_a_changed_value_rolls_with_its_cause() -> None:
    svc = service({"secret/db": "d1", "config/site": "c1"}, configs=("site",))
    got = decide(svc, {"secret/db": "d2", "config/site": "c2"})
    assert got is not None and got.roll
    assert got.cause == "secret db, config site updated"
    assert json.loads(got.annotation or "") == {"secret/db": "d2", "config/site": "c2"}


def test_added_mounts_are_recorded_without_rolling_and_missing_ones_remembered() -> None:
    svc = service({"secret/db": "d1"}, secrets=("db", "api"))
    got = decide(svc, {"secret/db": None, "secret/api": "a1"})
    assert got is not None and not got.roll
    assert json.loads(got.annotation or "") == {"secret/db": "d1", "secret/api": "a1"}


def test_nothing_mounted_drops_the_record() -> None:
    assert decide(service(secrets=()), {}) is None
    assert decide(service({"secret/db": "d1"}, secrets=()), {}) == Decision(annotation=None)


def test_an_unreadable_record_is_recorded_afresh() -> None:
    svc = service()
    svc.metadata.annotations[mountdigests.MOUNTED_DIGESTS] = "not json"
    assert decide(svc, {"secret/db": "d2"}) == Decision(annotation='{"secret/db":"d2"}')
