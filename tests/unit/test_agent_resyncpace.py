"""The periodic dataplane pass paced by its own cost (shoal.agent.resyncpace): pure."""

from __future__ import annotations

import pytest

from shoal.agent.resyncpace import Cost, Interval, ResyncPacer


def test_a_cheap_pass_keeps_the_floor_interval() -> None:
    pacer = ResyncPacer(30, now=100)
    assert pacer.due == 130
    # 0.5 s every 30 s is under 3 % of a CPU.
    assert pacer.passed(131, Cost(wall=0.5, cpu=0.4)) == Interval(30, "floor")
    assert pacer.due == 161
    assert pacer.wait(150) == 11 and not pacer.is_due(150) and pacer.is_due(161)


def test_a_costly_pass_pushes_the_next_one_out_to_keep_within_the_budget() -> None:
    pacer = ResyncPacer(30, now=0)
    # The 10,000 x 10 figure: 8.66 s of wall time, less of CPU.
    interval = pacer.passed(40, Cost(wall=8.66, cpu=7.9))
    assert interval.why == "cost"
    assert interval.seconds == pytest.approx(8.66 / 0.03)
    assert pacer.due == pytest.approx(40 + 8.66 / 0.03)
    # Whatever the cost, the net then spends the budget's share of a CPU, no more.
    assert 8.66 / interval.seconds == pytest.approx(0.03)


def test_cost_is_the_larger_of_wall_and_cpu_time() -> None:
    pacer = ResyncPacer(30, now=0, budget=0.1)
    # CPU over wall: the netlink work ran on threads in parallel.
    assert pacer.choose(Cost(wall=5, cpu=8)).seconds == pytest.approx(80)
    # Wall over CPU: the kernel and nft/bridge helpers worked for the pass.
    assert pacer.choose(Cost(wall=8, cpu=5)).seconds == pytest.approx(80)


def test_a_stalled_pass_cannot_put_the_net_off_beyond_the_ceiling() -> None:
    pacer = ResyncPacer(30, now=0, ceiling=600)
    assert pacer.passed(0, Cost(wall=3600, cpu=1)) == Interval(600, "ceiling")
    # ... and the next quiet pass brings the interval back.
    assert pacer.passed(600, Cost(wall=0.2, cpu=0.2)) == Interval(30, "floor")
    # A floor above the ceiling wins (tests and benches set resync_every very long).
    assert ResyncPacer(3600, now=0).choose(Cost(wall=100, cpu=100)).seconds == 3600


def test_drift_found_brings_the_next_check_back_to_the_floor() -> None:
    pacer = ResyncPacer(30, now=0)
    pacer.passed(10, Cost(wall=9, cpu=9))
    assert pacer.due == pytest.approx(310)
    assert pacer.passed(320, Cost(wall=9, cpu=9), drift=True) == Interval(30, "drift")
    assert pacer.due == 350
    # One quiet pass later the budget paces it again.
    assert pacer.passed(359, Cost(wall=9, cpu=9)).why == "cost"


def test_a_failed_pass_brings_the_next_check_no_later_than_the_floor() -> None:
    pacer = ResyncPacer(30, now=0)
    pacer.passed(10, Cost(wall=9, cpu=9))  # next due at 310
    pacer.failed(50)
    assert pacer.due == 80 and pacer.interval.why == "failed"
    # A periodic pass that failed is still due: it is retried, not put off.
    pacer.failed(85)
    assert pacer.due == 80 and pacer.is_due(85)


def test_nonsense_settings_are_refused_with_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"resync interval \(0\).*must be positive"):
        ResyncPacer(0, now=0)
    with pytest.raises(ValueError, match=r"budget \(0.0\) must be positive"):
        ResyncPacer(30, now=0, budget=0.0)
