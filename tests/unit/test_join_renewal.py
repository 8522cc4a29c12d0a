"""shoal/join/renewal.py: when a certificate is due for renewal."""

from __future__ import annotations

import datetime
from pathlib import Path

from shoal.join import datadir, renewal
from shoal.pki import ca as pki_ca
from shoal.pki import certs


def test_due_in_the_last_third_of_its_life() -> None:
    ca = pki_ca.make_ca()
    cert, _ = certs.issue_client(ca, "shoal:node:w1", datetime.timedelta(days=90))
    pem = pki_ca.cert_pem(cert)
    now = pki_ca.now()
    assert not renewal.due(pem, now)
    assert not renewal.due(pem, now + datetime.timedelta(days=55))
    assert renewal.due(pem, now + datetime.timedelta(days=62))
    assert renewal.due(pem, now + datetime.timedelta(days=100))


def test_a_manager_renews_its_own_certificates_with_the_same_key(tmp_path: Path) -> None:
    layout = datadir.Layout(tmp_path)
    ca = pki_ca.make_ca()
    datadir.save_pem(layout, "ca", ca.cert_pem, pki_ca.key_pem(ca.signing_key()))
    old, key = certs.issue_client(ca, "root", datetime.timedelta(minutes=1))
    datadir.save_pem(layout, "root", pki_ca.cert_pem(old), pki_ca.key_pem(key))
    fresh, fresh_key = certs.issue_client(ca, "shoal:node:m1")
    datadir.save_pem(layout, "node", pki_ca.cert_pem(fresh), pki_ca.key_pem(fresh_key))
    cfg = datadir.NodeConfig("m1", "manager", "10.0.0.1", ("https://10.0.0.1:2379",), "/s")
    assert renewal.renew_due(layout, cfg) == ["root"]
    new = pki_ca.load_cert_pem(layout.cert("root").read_bytes())
    assert certs.common_name(new) == "root" and certs.issued_by(new, ca)
    assert new.not_valid_after_utc > old.not_valid_after_utc
    assert new.public_key() == key.public_key()
    assert renewal.renew_due(layout, cfg) == []
