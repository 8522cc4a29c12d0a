"""``swctl diff``: exit 0 without changes, 1 with changes, 2 on errors (kubectl's codes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.store import etcd_server
from tests.integration.cli_support import Swctl, service


@pytest.fixture
def swctl(etcd: etcd_server.EtcdServer, prefix: str, tmp_path: Path) -> Swctl:
    return Swctl(etcd.url, prefix, tmp_path)


def test_diff_exit_codes(swctl: Swctl) -> None:
    path = swctl.write("web.yaml", service("web", 2))
    new = swctl("diff", "-f", str(path), expect=1).stdout
    assert "+++ applied/services/default/web" in new and "+  replicas: 2" in new
    swctl("apply", "-d", "-f", str(path))
    assert swctl("diff", "-f", str(path), expect=0).stdout == ""
    path.write_text(service("web", 4))
    changed = swctl("diff", "-f", str(path), expect=1).stdout.splitlines()
    assert "-  replicas: 2" in changed and "+  replicas: 4" in changed
    # Server-owned fields never show up as differences.
    assert not any(word in line for line in changed
                   for word in ("uid:", "resourceVersion", "creationTimestamp", "generation"))
    swctl("apply", "-d", "-f", str(path))
    swctl("diff", "-f", str(path), expect=0)


def test_diff_errors_exit_2(swctl: Swctl) -> None:
    bad = swctl.write("bad.yaml", service("web", -3))
    err = swctl("diff", "-f", str(bad), expect=2).stderr
    assert "spec.replicas: must be >= 0, got -3" in err
    swctl("diff", "-f", "missing.yaml", expect=2)
