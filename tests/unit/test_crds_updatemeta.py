"""shoal/crds/updatemeta.py: lenient readers of the update lifecycle's status, and the
update/rollback config defaults read from the Service schema."""

from __future__ import annotations

from shoal.crds import updatemeta as um
from tests.unit.cli_support import progressing, service, three_revisions


def test_config_defaults_are_swarms_from_the_schema() -> None:
    assert um.config_defaults("updateConfig") == {
        "parallelism": 1, "delay": "0s", "failureAction": "pause", "monitor": "5s",
        "maxFailureRatio": 0, "order": "stop-first"}
    assert um.config_defaults("rollbackConfig")["failureAction"] == "pause"
    um.config_defaults("updateConfig")["parallelism"] = 9  # a copy each time
    assert um.config_defaults("updateConfig")["parallelism"] == 1


def test_readers_take_what_they_can_and_skip_the_rest() -> None:
    svc = three_revisions()
    assert [r.number for r in um.revisions(svc)] == [1, 2, 3]
    assert um.revisions(svc)[0].image == "nginx:1"
    assert um.current_revision(svc) == 3
    broken = service(update="junk", revisions={"not": "a list"}, revision="3")  # type: ignore[arg-type]
    assert um.update_status(broken) == {} and um.revisions(broken) == []
    assert um.current_revision(broken) is None and um.progressing(broken) is None
    cond = progressing("False", um.REASON_ROLLED_BACK)
    assert um.progressing(service(conditions=cond)) == cond[0]
