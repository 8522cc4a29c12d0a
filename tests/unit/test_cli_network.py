"""shoal/cli/network.py: which network create options are refused, and why."""

from __future__ import annotations

from shoal.cli import network


def test_refused_options_name_the_reason() -> None:
    assert network.refused_options("overlay", []) == []
    [bridge] = network.refused_options("bridge", [])
    assert bridge.startswith('driver "bridge" is not available')
    encrypted, mtu, odd = network.refused_options(
        "overlay", ["encrypted", "com.docker.network.driver.mtu=1400", "x=y"])
    assert encrypted.startswith("--opt encrypted: Shoal does not encrypt overlay traffic")
    assert "MTU" in mtu
    assert 'unknown option "x"' in odd
