"""TLS bundles: found in a directory, given all-or-nothing as options, checked to exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.pki.bundle import Bundle


def test_from_dir_reads_ca_and_named_pair(tmp_path: Path) -> None:
    for name in ("ca.crt", "node.crt", "node.key"):
        (tmp_path / name).write_text("x")
    assert Bundle.from_dir(tmp_path) == Bundle(tmp_path / "ca.crt", tmp_path / "node.crt",
                                               tmp_path / "node.key")
    with pytest.raises(ValueError, match=r"root\.crt does not exist"):
        Bundle.from_dir(tmp_path, "root")


def test_options_come_all_three_or_none(tmp_path: Path) -> None:
    assert Bundle.from_options(None, None, None) is None
    with pytest.raises(ValueError, match="missing --etcd-cert, --etcd-key"):
        Bundle.from_options(str(tmp_path / "ca.crt"), None, None)
