"""shoal/cli/updatestatus.py: every status.update state of the contract as the follower's
verdict — go on, done (exit 0) or failed (exit 1 with the updater's message)."""

from __future__ import annotations

from shoal.cli import updatestatus as us
from shoal.crds import updatemeta as um
from tests.unit.cli_support import progressing, revision, service


def test_no_updater_status_leaves_it_to_the_tasks() -> None:
    assert not us.verdict(service()).authoritative
    # The orchestrator's status from before the updater: no generation, not trusted.
    old = service(update={"state": "paused", "message": "update paused"})
    assert not us.verdict(old).authoritative


def test_a_status_about_an_older_generation_says_nothing_about_this_change() -> None:
    svc = service(generation=4, update={"state": "completed", "generation": 3})
    assert not us.verdict(svc).authoritative


def test_a_rollback_request_not_yet_taken_up_is_pending_even_if_completed() -> None:
    svc = service(update={"state": "completed", "generation": 3},
                  annotations={um.ROLLBACK_REQUEST: "previous"})
    said = us.verdict(svc)
    assert said.outcome == us.PENDING and said.authoritative


def test_states() -> None:
    def said(state: str, message: str = "", **kw: object) -> us.Verdict:
        return us.verdict(service(update={"state": state, "generation": 3,
                                          "message": message}, **kw))  # type: ignore[arg-type]

    assert said("updating", "update in progress").outcome == us.GOING
    assert said("completed", "update completed").outcome == us.DONE
    paused = said("paused", "update paused due to failure of task web.3.2: exit code 1")
    assert paused.outcome == us.FAILED
    assert paused.message == "update paused due to failure of task web.3.2: exit code 1"
    assert said("rollback_paused", "rollback paused").outcome == us.FAILED


def test_an_asked_for_rollback_is_followed_to_success_with_dockers_first_line() -> None:
    started = us.verdict(service(update={"state": um.ROLLBACK_STARTED, "generation": 3,
                                         "message": "rollback started: manually requested "
                                                    "rollback: 1 out of 3 tasks updated"}))
    assert started.outcome == us.GOING
    assert started.header == "rollback: manually requested rollback"
    done = us.verdict(service(update={"state": um.ROLLBACK_COMPLETED, "generation": 3,
                                      "message": "rollback completed"},
                              conditions=progressing("True", um.REASON_ROLLBACK_COMPLETED)))
    assert done.outcome == us.DONE


def test_an_automatic_rollback_fails_once_completed_with_the_cause() -> None:
    failure = "task web.2.2 failed on node n1: exit code 1"
    cause = f"update rolled back due to failure of {failure}"
    started = us.verdict(service(update={"state": um.ROLLBACK_STARTED, "generation": 3,
                                         "message": f"rollback started: {cause}: 1 out of "
                                                    "2 tasks updated"},
                                 annotations={um.ROLLBACK_REASON: failure}))
    assert started.outcome == us.GOING and started.header == f"rollback: {cause}"
    done = us.verdict(service(update={"state": um.ROLLBACK_COMPLETED, "generation": 3,
                                      "message": "rollback completed"},
                              conditions=progressing("False", um.REASON_ROLLED_BACK, cause)))
    assert done.outcome == us.FAILED
    assert done.message == f"service rolled back: {cause}"


def test_a_refused_request_fails_only_the_wait_that_asked() -> None:
    refused = "rollback request '9' refused: revision 9 is not in the history"
    svc = service(update={"state": "completed", "generation": 3},
                  conditions=progressing("False", um.REASON_ROLLBACK_REFUSED, refused))
    said = us.verdict(svc, asked_rollback=True)
    assert said.outcome == us.FAILED and said.message == refused
    assert us.verdict(svc).outcome == us.DONE


def test_the_updater_reports_once_it_keeps_revisions_or_a_generation() -> None:
    assert not us.verdict(service()).updater_reports
    assert us.verdict(service(revisions=[revision(1, "nginx:1")])).updater_reports
    older = service(generation=4, update={"state": "completed", "generation": 3})
    assert us.verdict(older).updater_reports and not us.verdict(older).authoritative
