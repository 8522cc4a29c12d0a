"""``shoal.controllers.maintenance``: when the loop acts, and the quota it assumes."""

from __future__ import annotations

from shoal.controllers.maintenance import controller as m


def test_acts_after_its_jitter_and_retries_a_stuck_alarm_only_after_a_pause() -> None:
    assert not m.due(first_seen=100.0, delay=1.0, last_try=0.0, stuck=False, now=100.5)
    assert m.due(first_seen=100.0, delay=1.0, last_try=0.0, stuck=False, now=101.0)
    assert not m.due(100.0, 1.0, last_try=105.0, stuck=True, now=105.0 + m.RETRY_STUCK - 1)
    assert m.due(100.0, 1.0, last_try=105.0, stuck=True, now=105.0 + m.RETRY_STUCK)
    # Something deleted since the last try (the revision moved): at once.
    assert m.due(100.0, 1.0, last_try=105.0, stuck=True, now=106.0, moved=True)




def test_compacts_to_a_revision_a_couple_of_seconds_old_when_it_has_one() -> None:
    seen = [(10.0, 100), (12.0, 105), (13.5, 107)]
    assert m.compact_to(seen, now=14.0) == 105   # the newest seen >= 2 s ago
    assert m.compact_to(seen[2:], now=14.0) == 107  # none that old: the oldest seen
    assert m.compact_to([], now=14.0) == 0          # nothing seen: the current one
