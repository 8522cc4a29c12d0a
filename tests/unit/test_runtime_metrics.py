"""The /metrics endpoint of a TLS cluster's process: https only, cluster certificates only."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from shoal.pki import ca as pki_ca
from shoal.pki import certs
from shoal.pki.bundle import Bundle
from shoal.runtime import metrics


def _bundle(d: Path, cluster: pki_ca.CA, name: str, user: str) -> Bundle:
    cert, key = certs.issue_client(cluster, user)
    pki_ca.write_file(d / f"{name}.crt", pki_ca.cert_pem(cert), 0o644)
    pki_ca.write_file(d / f"{name}.key", pki_ca.key_pem(key), 0o600)
    return Bundle(d / "ca.crt", d / f"{name}.crt", d / f"{name}.key")


def test_metrics_over_tls_demand_a_cluster_certificate(tmp_path: Path) -> None:
    cluster = pki_ca.make_ca()
    cluster.save(tmp_path / "ca.crt")
    served = _bundle(tmp_path, cluster, "manager", "root")
    scraper = _bundle(tmp_path, cluster, "scraper", "shoal:node:n1")
    server = metrics.start_metrics_server(0, "127.0.0.1", tls=served)
    url = f"https://127.0.0.1:{server.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5,
                                    context=scraper.client_context(check_hostname=False)) as r:
            assert r.status == 200
        anonymous = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        anonymous.check_hostname = False
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(url, timeout=5, context=anonymous)
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(url.replace("https", "http"), timeout=5)
    finally:
        server.close()
