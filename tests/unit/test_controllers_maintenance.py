"""``shoal.controllers.maintenance``: when the loop acts, and the quota it assumes."""

from __future__ import annotations

import pytest

from shoal.controllers.maintenance import controller as m
from shoal.store import etcd_server


def test_acts_after_its_jitter_and_retries_a_stuck_alarm_only_after_a_pause() -> None:
    assert not m.due(first_seen=100.0, delay=1.0, last_try=0.0, stuck=False, now=100.5)
    assert m.due(first_seen=100.0, delay=1.0, last_try=0.0, stuck=False, now=101.0)
    assert not m.due(100.0, 1.0, last_try=105.0, stuck=True, now=105.0 + m.RETRY_STUCK - 1)
    assert m.due(100.0, 1.0, last_try=105.0, stuck=True, now=105.0 + m.RETRY_STUCK)


def test_quota_is_the_environments_or_shoals_own() -> None:
    assert m.quota_from_env({}) == etcd_server.QUOTA_BYTES
    assert m.quota_from_env({m.QUOTA_ENV: "67108864"}) == 64 * 1024 * 1024
    with pytest.raises(ValueError, match="SHOAL_ETCD_QUOTA_BYTES=\"64M\": expected"):
        m.quota_from_env({m.QUOTA_ENV: "64M"})
