"""Pure parts of ``shoal/net/overlay.py``: reading the host's nameservers, which an overlay
subnet must never capture (the netlink side is tested in tests/e2e/test_overlay.py)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from shoal.net import overlay


def test_nameservers_are_read_from_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch example\nnameserver 10.255.255.53\n"
                    "nameserver fd00::1\nnameserver not-an-address\noptions ndots:0\n")
    assert overlay.resolv_nameservers(str(conf)) == [ipaddress.IPv4Address("10.255.255.53")]
    assert overlay.resolv_nameservers(str(tmp_path / "missing")) == []
