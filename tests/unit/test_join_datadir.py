"""shoal/join/datadir.py: node.json round trip, damaged files, key permissions."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from shoal.join import datadir


def test_node_json_round_trip_and_clear_errors(tmp_path: Path) -> None:
    layout = datadir.Layout(tmp_path / "d")
    with pytest.raises(datadir.DataDirError, match=r"not part of a cluster .*swctl init"):
        datadir.load_node(layout)
    cfg = datadir.NodeConfig("m1", "manager", "10.0.0.1", ("https://10.0.0.1:2379",),
                             "/shoal", ("10.0.0.1:4243",))
    datadir.save_node(layout, cfg)
    assert datadir.load_node(layout) == cfg
    layout.node_file.write_text('{"name": "m1", "role": "boss"}')
    with pytest.raises(datadir.DataDirError,
                       match=r'"role" is .boss.; expected manager or worker'):
        datadir.load_node(layout)
    layout.node_file.write_text("{")
    with pytest.raises(datadir.DataDirError, match="not valid JSON"):
        datadir.load_node(layout)


def test_keys_are_private(tmp_path: Path) -> None:
    layout = datadir.Layout(tmp_path)
    datadir.save_pem(layout, "node", b"CERT", b"KEY")
    assert stat.S_IMODE(layout.key("node").stat().st_mode) == 0o600
    assert layout.cert("node").read_bytes() == b"CERT"
    assert datadir.missing(layout, ["node", "root"]) == [layout.cert("root"),
                                                          layout.key("root")]


def test_resolve_flag_env_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(datadir.ENV, raising=False)
    assert datadir.resolve(None) == datadir.DEFAULT
    monkeypatch.setenv(datadir.ENV, str(tmp_path))
    assert datadir.resolve(None) == tmp_path
    assert datadir.resolve("/x") == Path("/x")
