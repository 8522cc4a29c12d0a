"""The etcd command lines EtcdServer builds: alone (as `swctl up` runs it), as a member of
a cluster, and with TLS for clients and peers."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.store import etcd_server


def _flags(argv: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            out[arg] = "" if nxt.startswith("--") else nxt
    return out


def test_alone_it_is_its_own_cluster(tmp_path: Path) -> None:
    server = etcd_server.EtcdServer(tmp_path / "d", client_port=2379, peer_port=2380)
    flags = _flags(server.command())
    assert flags["--initial-cluster"] == "shoal=http://127.0.0.1:2380"
    assert flags["--initial-cluster-state"] == "new"
    assert flags["--advertise-client-urls"] == "http://127.0.0.1:2379"
    assert "--client-cert-auth" not in flags


def test_a_member_joining_with_tls(tmp_path: Path) -> None:
    tls = etcd_server.ServerTLS(tmp_path / "ca.crt", tmp_path / "s.crt", tmp_path / "s.key",
                                tmp_path / "p.crt", tmp_path / "p.key")
    server = etcd_server.EtcdServer(
        tmp_path / "d", host="10.0.0.2", client_port=2379, peer_port=2380, name="m2",
        initial_cluster="m1=https://10.0.0.1:2380,m2=https://10.0.0.2:2380",
        initial_cluster_state="existing", tls=tls)
    assert server.url == "https://10.0.0.2:2379"
    flags = _flags(server.command())
    assert flags["--name"] == "m2"
    assert flags["--initial-cluster-state"] == "existing"
    assert flags["--listen-peer-urls"] == "https://10.0.0.2:2380"
    assert flags["--trusted-ca-file"] == flags["--peer-trusted-ca-file"] == str(tmp_path / "ca.crt")
    assert "--client-cert-auth" in flags and "--peer-client-cert-auth" in flags
    assert flags["--peer-cert-file"] == str(tmp_path / "p.crt")
    with pytest.raises(ValueError, match='initial_cluster_state "old"'):
        etcd_server.EtcdServer(tmp_path / "d", initial_cluster_state="old")


def test_cluster_members_run_shoals_raft_timings_and_a_lone_etcd_etcds_own(
        tmp_path: Path) -> None:
    lone = _flags(etcd_server.EtcdServer(tmp_path / "a").command())
    assert "--heartbeat-interval" not in lone and "--pre-vote" not in lone
    # The first member `swctl init` starts is alone at first, but others join it later:
    # it runs the cluster's timings from the start, as every joining member does.
    first = _flags(etcd_server.EtcdServer(tmp_path / "b", name="m1",
                                          initial_cluster="m1=http://127.0.0.1:2380").command())
    timings = etcd_server.CLUSTER_TIMINGS
    assert first["--heartbeat-interval"] == str(timings.heartbeat_ms)
    assert first["--election-timeout"] == str(timings.election_ms)
    assert "--pre-vote" in first
    chosen = _flags(etcd_server.EtcdServer(
        tmp_path / "c", timings=etcd_server.ETCD_DEFAULT_TIMINGS).command())
    assert chosen["--election-timeout"] == "1000" and "--pre-vote" not in chosen
    with pytest.raises(ValueError, match="at least 5 heartbeats"):
        etcd_server.RaftTimings(100, 300)
