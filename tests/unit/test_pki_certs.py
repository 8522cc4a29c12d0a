"""Issued certificates: the names, usages, CNs and lifetimes etcd and the agents rely on."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from shoal.pki import ca, certs


@pytest.fixture(scope="module")
def cluster_ca() -> ca.CA:
    return ca.make_ca()


def _sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in ext]


def _usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_server_certs_name_etcd_shoal_and_their_addresses(cluster_ca: ca.CA) -> None:
    cert, _ = certs.issue_server(cluster_ca, ["10.0.0.1", "mgr1.example", "10.0.0.1"])
    assert _sans(cert) == ["etcd.shoal", str(ipaddress.ip_address("10.0.0.1")), "mgr1.example"]
    assert _usages(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert certs.issued_by(cert, cluster_ca)
    assert not certs.issued_by(cert, ca.make_ca())
    peer, _ = certs.issue_peer(cluster_ca, ["10.0.0.1"])
    assert "10.0.0.1" in _sans(peer)


def test_client_certs_carry_the_etcd_user_as_cn(cluster_ca: ca.CA) -> None:
    cert, _ = certs.issue_client(cluster_ca, certs.node_user("web-1"))
    assert certs.common_name(cert) == "shoal:node:web-1"
    # serverAuth too: a node's certificate also serves its log endpoint.
    assert _usages(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert abs(life - certs.NODE_CERT_LIFETIME) < datetime.timedelta(seconds=5)


def test_a_csr_is_signed_with_the_signers_cn_not_the_askers(cluster_ca: ca.CA) -> None:
    key = ca.new_key()
    csr = certs.load_csr_pem(certs.make_csr(key, "root").public_bytes(
        serialization.Encoding.PEM))
    cert = certs.sign_csr(cluster_ca, csr, certs.node_user("w1"))
    assert certs.common_name(cert) == "shoal:node:w1"
    assert cert.public_key() == key.public_key()
    server = certs.sign_csr(cluster_ca, csr, "w1", server_hosts=["10.0.0.9"])
    assert "10.0.0.9" in _sans(server)
    with pytest.raises(ValueError, match="not a PEM CSR"):
        certs.load_csr_pem(b"junk")


def test_expiry_is_seen_ahead_and_never_outlives_the_ca(cluster_ca: ca.CA) -> None:
    cert, _ = certs.issue_client(cluster_ca, "root", lifetime=datetime.timedelta(days=10))
    assert not certs.expires_within(cert, datetime.timedelta(days=9))
    assert certs.expires_within(cert, datetime.timedelta(days=11))
    short_ca = ca.make_ca(lifetime=datetime.timedelta(days=30))
    capped, _ = certs.issue_client(short_ca, "root")
    assert capped.not_valid_after_utc <= short_ca.cert.not_valid_after_utc
