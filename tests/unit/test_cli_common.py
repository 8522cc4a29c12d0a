"""cli.common: kubectl's TYPE/NAME refs (Docker's dotted names kept whole), and the
cluster found in a node's data dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.cli import common, errors
from shoal.join import datadir


def test_type_slash_name_splits_at_the_first_slash_only() -> None:
    assert common.split_refs("service/hyperf_v1.0", []) == ("service", ["hyperf_v1.0"])
    assert common.split_refs("svc/a", ["svc/b_c.d"]) == ("svc", ["a", "b_c.d"])
    assert common.split_refs("widgets.example.com/w1", []) == ("widgets.example.com", ["w1"])


def test_kind_and_names_pass_through() -> None:
    assert common.split_refs("service", ["hyperf_v1.0"]) == ("service", ["hyperf_v1.0"])


@pytest.mark.parametrize("refs", [["service/a", "network/b"], ["service/a", "b"],
                                  ["service/"]])
def test_mixed_or_empty_refs_are_refused(refs: list[str]) -> None:
    with pytest.raises(errors.CliError, match=r"give TYPE/NAME\.\.\. of one kind"):
        common.split_refs(refs[0], refs[1:])


def test_without_etcd_swctl_finds_the_cluster_in_the_data_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SHOAL_ETCD", "SHOAL_PREFIX", "SHOAL_KEYRING", "SHOAL_ETCD_CA",
                "SHOAL_ETCD_CERT", "SHOAL_ETCD_KEY"):
        monkeypatch.delenv(var, raising=False)
    layout = datadir.Layout(tmp_path)
    assert common.GlobalOptions.resolve(None, None, None, data_dir=str(tmp_path)).tls is None
    datadir.save_node(layout, datadir.NodeConfig(
        "w1", "worker", "10.0.0.5", ("https://10.0.0.1:2379", "https://10.0.0.2:2379"), "/c"))
    opts = common.GlobalOptions.resolve(None, None, None, data_dir=str(tmp_path))
    assert opts.etcd == "https://10.0.0.1:2379,https://10.0.0.2:2379"
    assert opts.prefix == "/c"
    assert opts.tls is not None and opts.tls.cert == layout.cert("node")  # a worker's
    datadir.save_pem(layout, "root", b"C", b"K")
    opts = common.GlobalOptions.resolve(None, "/other", None, data_dir=str(tmp_path))
    assert opts.tls is not None and opts.tls.cert == layout.cert("root")  # a manager's
    assert opts.prefix == "/other"  # a flag still wins
    given = common.GlobalOptions.resolve("http://127.0.0.1:2379", None, None,
                                         data_dir=str(tmp_path))
    assert given.etcd == "http://127.0.0.1:2379" and given.tls is None
