"""The restart policy (``controllers/orchestrator/restart.py``): defaults, parsing, and when
a failed task is replaced, counted and annotated."""

from __future__ import annotations

import pytest

from shoal.controllers.orchestrator import restart as rs
from tests.unit.orchestrator_support import NOW, task

# --- restart policy ------------------------------------------------------------------------


def test_restart_policy_defaults_and_parsing() -> None:
    assert rs.RestartPolicy.from_spec(None) == rs.RestartPolicy("any", 5.0, 0, 0.0)
    policy = rs.RestartPolicy.from_spec({"condition": "on-failure", "delay": "1m30s",
                                         "maxAttempts": 3, "window": "2m"})
    assert policy == rs.RestartPolicy("on-failure", 90.0, 3, 120.0)
    with pytest.raises(ValueError, match=r"restartPolicy\.condition"):
        rs.RestartPolicy.from_spec({"condition": "sometimes"})


def test_restart_decisions() -> None:
    policy = rs.RestartPolicy(delay=5.0)
    assert rs.decide(task(1), policy, NOW).action is rs.Action.NOT_NEEDED
    failed = task(1, state="failed", ended=NOW - 2)
    later = rs.decide(failed, policy, NOW)
    assert later.action is rs.Action.LATER and later.delay == pytest.approx(3.0)
    assert rs.decide(failed, policy, NOW + 3).action is rs.Action.NOW
    # No end time: restart rather than wait forever.
    assert rs.decide(task(1, state="failed"), policy, NOW).action is rs.Action.NOW

    done = task(1, state="complete", ended=NOW - 60)
    assert rs.decide(done, policy, NOW).action is rs.Action.NOW  # condition any
    on_failure = rs.RestartPolicy(condition="on-failure")
    assert rs.decide(done, on_failure, NOW).action is rs.Action.NEVER
    assert rs.decide(task(1, state="failed", ended=NOW - 60), on_failure,
                     NOW).action is rs.Action.NOW
    assert rs.decide(task(1, state="rejected", ended=NOW - 60), on_failure,
                     NOW).action is rs.Action.NOW
    never = rs.decide(failed, rs.RestartPolicy(condition="none"), NOW)
    assert never.action is rs.Action.NEVER and "condition is none" in never.reason


def test_max_attempts_count_the_slots_restarts() -> None:
    policy = rs.RestartPolicy(delay=0, max_attempts=3)
    ledger = rs.Ledger()
    for i in range(3):
        ledger = ledger.after_restart(NOW + i, policy)
    assert ledger == rs.Ledger(count=3, times=(NOW, NOW + 1, NOW + 2))
    ledger = ledger.after_restart(NOW + 3, policy)
    assert ledger.times == (NOW + 1, NOW + 2, NOW + 3)  # trimmed to maxAttempts entries

    third = task(1, state="failed", ended=NOW, notes=rs.Ledger(count=2).annotations())
    assert rs.decide(third, policy, NOW + 10).action is rs.Action.NOW
    fourth = task(1, state="failed", ended=NOW, notes=rs.Ledger(count=3).annotations())
    decision = rs.decide(fourth, policy, NOW + 10)
    assert decision.action is rs.Action.NEVER
    assert decision.reason == "restart limit reached: 3 of 3 restarts"


def test_window_forgets_old_restarts() -> None:
    policy = rs.RestartPolicy(delay=0, max_attempts=2, window=60.0)
    notes = rs.Ledger(count=5, times=(NOW - 100, NOW - 30, NOW - 10)).annotations()
    t = task(1, state="failed", ended=NOW, notes=notes)
    decision = rs.decide(t, policy, NOW)
    assert decision.action is rs.Action.NEVER and "within 1m0s" in decision.reason
    assert rs.decide(t, policy, NOW + 35).action is rs.Action.NOW  # one left in the window


def test_replacement_annotations() -> None:
    policy = rs.RestartPolicy(max_attempts=5)
    failed = task(1, state="failed", ended=NOW, notes=rs.Ledger(1, (NOW - 50,)).annotations())
    assert rs.replacement_annotations(failed, policy, NOW) == {
        rs.RESTART_COUNT: "2", rs.RESTART_TIMES: f"{NOW - 50:.0f} {NOW:.0f}"}
    # A move is not the task's fault: history carried over unchanged.
    assert rs.Ledger.of(task(1, notes=rs.replacement_annotations(
        failed, policy, NOW, counted=False))) == rs.Ledger(1, (NOW - 50,))
    # A new generation starts over.
    assert rs.replacement_annotations(failed, policy, NOW, generation=2) == {
        rs.RESTART_COUNT: "1", rs.RESTART_TIMES: f"{NOW:.0f}"}


def test_a_failure_stamped_by_a_clock_hours_ahead_is_restarted_not_waited_on() -> None:
    # Found while adding the chaos harness's clock-jump fault: an agent whose wall clock an NTP step
    # had put 2 h ahead stamps a failure 2 h in the future; the delay must not become 2 h
    # (the stamp stays in etcd after the clocks agree again).
    policy = rs.RestartPolicy(delay=5.0)
    ahead = task(1, state="failed", ended=NOW + 7200)
    assert rs.decide(ahead, policy, NOW).action is rs.Action.NOW
    # A stamp within the hosts' usual skew is still waited on, as before.
    slightly = rs.decide(task(1, state="failed", ended=NOW + 1), policy, NOW)
    assert slightly.action is rs.Action.LATER and slightly.delay == pytest.approx(6.0)
