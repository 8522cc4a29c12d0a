"""shoal/join/client.py against shoal/join/server.py on a loopback port: the CA pinned
by the token's digest, a server certificate from another CA refused before the token is
sent, plain HTTP answered with why."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from shoal.join import client, server
from shoal.pki import ca as pki_ca
from shoal.pki import certs, tokens

pytestmark = pytest.mark.asyncio


def _pki(tmp: Path, name: str) -> tuple[bytes, Path, Path, Path]:
    ca = pki_ca.make_ca()
    cert, key = certs.issue_server(ca, ["127.0.0.1"])
    paths = (tmp / f"{name}-ca.crt", tmp / f"{name}.crt", tmp / f"{name}.key")
    paths[0].write_bytes(ca.cert_pem)
    paths[1].write_bytes(pki_ca.cert_pem(cert))
    paths[2].write_bytes(pki_ca.key_pem(key))
    return ca.cert_pem, *paths


def _token(ca_pem: bytes) -> str:
    return tokens.make_token(pki_ca.CA(pki_ca.load_cert_pem(ca_pem)).der, tokens.new_secret())


def _csr() -> bytes:
    return certs.make_csr(pki_ca.new_key(), "x").public_bytes(serialization.Encoding.PEM)


@pytest.fixture
async def endpoint(tmp_path: Path) -> AsyncIterator[tuple[server.JoinServer, bytes, list[str]]]:
    ca_pem, ca, cert, key = _pki(tmp_path, "real")
    seen: list[str] = []

    async def get_ca(body: bytes, peer: str) -> tuple[int, str, bytes]:
        return 200, "application/x-pem-file", ca_pem

    async def post_join(body: bytes, peer: str) -> tuple[int, str, bytes]:
        seen.append(body.decode())
        return 403, "application/json", b'{"error": "invalid join token: no"}'

    srv = server.JoinServer("127.0.0.1", 0, server.server_context(str(ca), str(cert), str(key)),
                            {"GET /ca": get_ca, "POST /join": post_join})
    await srv.start()
    yield srv, ca_pem, seen
    await srv.close()


async def test_the_token_pins_the_ca_and_refusals_reach_the_joiner(
        endpoint: tuple[server.JoinServer, bytes, list[str]]) -> None:
    srv, ca_pem, seen = endpoint
    token = _token(ca_pem)
    csr = _csr()
    with pytest.raises(client.JoinError, match="invalid join token: no"):
        await asyncio.to_thread(client.join, "127.0.0.1", srv.port, token, csr, "w1", "1.2.3.4")
    assert len(seen) == 1 and token in seen[0]

    other = _token(pki_ca.make_ca().cert_pem)
    with pytest.raises(client.JoinError, match="another CA than the token was made for"):
        await asyncio.to_thread(client.join, "127.0.0.1", srv.port, other, csr, "w1", "1.2.3.4")
    assert len(seen) == 1  # nothing was sent


async def test_a_server_certificate_from_another_ca_is_refused(
        endpoint: tuple[server.JoinServer, bytes, list[str]], tmp_path: Path) -> None:
    srv, ca_pem, seen = endpoint
    # A middle man serving the real CA at /ca but its own certificate.
    _, _, cert, key = _pki(tmp_path, "mitm")
    srv.tls = server.server_context(str(tmp_path / "real-ca.crt"), str(cert), str(key))
    token = _token(ca_pem)
    with pytest.raises(client.JoinError, match="certificate the cluster's CA did not sign"):
        await asyncio.to_thread(client.join, "127.0.0.1", srv.port, token,
                                _csr(), "w1", "1.2.3.4")
    assert seen == []


async def test_plain_http_is_answered_with_why(
        endpoint: tuple[server.JoinServer, bytes, list[str]]) -> None:
    srv, _, _ = endpoint

    def get() -> tuple[int, str]:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/ca", timeout=5)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        return 200, ""

    code, body = await asyncio.to_thread(get)
    assert code == 400 and "speaks HTTPS only" in body
