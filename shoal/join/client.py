"""The joiner's side of the join endpoint: fetch the CA, pin it to the token, ask.

What it owns: the order that makes a first contact safe without any prior trust. The
joiner knows only the token and an address. It fetches ``GET /ca`` over TLS it cannot
verify yet, hashes the certificate it got and compares that with the digest in the
token; only if they match does it talk again, now verifying the manager's certificate
against that CA (and the name every manager's certificate carries, ``etcd.shoal``), and
send the token's secret. A man in the middle can show a CA of its own, but not one whose
digest is in the token, so it never sees the secret (docs/cluster.md says more).

Blocking (plain sockets): ``swctl join`` does nothing else while it waits, and the
agent's renewal runs it in a thread.
"""

from __future__ import annotations

import hmac
import json
import socket
import ssl
from typing import Any, Final

from shoal.join.protocol import (
    SERVER_NAME,
    JoinRequest,
    JoinResponse,
    Refusal,
    encode,
    join_addr,
)
from shoal.pki import ca as pki_ca
from shoal.pki import tokens as pki_tokens

TIMEOUT: Final = 30.0  # a manager join waits for the etcd member to be added


class JoinError(Exception):
    """The join could not happen; the message says why and what to do."""


def _request(host: str, port: int, ctx: ssl.SSLContext, method: str, path: str,
             body: bytes = b"", server_name: str | None = SERVER_NAME,
             ) -> tuple[int, bytes]:
    where = join_addr(host, port)
    try:
        raw = socket.create_connection((host, port), timeout=TIMEOUT)
    except OSError as exc:
        raise JoinError(f"cannot reach the join endpoint at {where} ({exc.strerror or exc}): "
                        "is the address right, and is the manager up? (`swctl init` and "
                        "`swctl join-token` print it)") from None
    try:
        conn = _handshake(raw, ctx, server_name, where)
        with conn:
            head = (f"{method} {path} HTTP/1.1\r\nHost: {where}\r\nContent-Type: "
                    f"application/json\r\nContent-Length: {len(body)}\r\nConnection: "
                    "close\r\n\r\n").encode()
            conn.sendall(head + body)
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    except OSError as exc:  # timeouts and resets after the handshake
        raise JoinError(f"the join endpoint at {where} stopped answering ({exc})") from None
    finally:
        raw.close()
    response = b"".join(chunks)
    head_end = response.find(b"\r\n\r\n")
    status_line = response[:response.find(b"\r\n")].split(b" ")
    if head_end < 0 or len(status_line) < 2 or not status_line[1].isdigit():
        raise JoinError(f"{where} answered something that is not HTTP: is it a Shoal join "
                        "endpoint?")
    return int(status_line[1]), response[head_end + 4:]


def _handshake(raw: socket.socket, ctx: ssl.SSLContext, server_name: str | None,
               where: str) -> ssl.SSLSocket:
    try:
        return ctx.wrap_socket(raw, server_hostname=server_name)
    except ssl.SSLCertVerificationError as exc:
        raise JoinError(f"the join endpoint at {where} showed a certificate the cluster's CA "
                        f"did not sign ({exc.verify_message}): refusing to send the token") \
            from None
    except OSError as exc:  # ssl.SSLError too
        raise JoinError(f"{where} did not answer TLS ({exc}): is it a Shoal join endpoint "
                        "(port 4243 by default)?") from None


def fetch_ca(host: str, port: int, digest: str) -> bytes:
    """The CA at ``host:port``, if its digest is ``digest`` (the token's)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # nothing to verify with yet: the digest decides
    status, body = _request(host, port, ctx, "GET", "/ca", server_name=None)
    if status != 200:
        raise JoinError(f"{join_addr(host, port)} answered GET /ca with {status}: is it a "
                        "Shoal join endpoint?")
    try:
        actual = pki_tokens.ca_digest(pki_ca.CA(pki_ca.load_cert_pem(body)).der)
    except ValueError:
        raise JoinError(f"{join_addr(host, port)} sent a CA that is not a certificate") \
            from None
    if not hmac.compare_digest(actual, digest):
        raise JoinError(f"the cluster at {join_addr(host, port)} has another CA than the "
                        "token was made for (its digest does not match): the token is from "
                        "another cluster, or something is intercepting the connection; "
                        "nothing was sent")
    return body


def pinned_context(ca_pem: bytes, cert: str | None = None,
                   key: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=ca_pem.decode())
    if cert and key:
        ctx.load_cert_chain(cert, key)
    return ctx


def _answer(status: int, body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    if status != 200:
        message = data.get("error") if isinstance(data, dict) else None
        raise JoinError(str(message) if message else f"{what} failed with HTTP {status}")
    if not isinstance(data, dict):
        raise JoinError(f"{what}: the answer is not a JSON object")
    return data


def join(host: str, port: int, token: str, csr: bytes, name: str,
         advertise_addr: str) -> JoinResponse:
    """Join through ``host:port`` with ``token``; the manager's answer."""
    try:
        digest = pki_tokens.parse_token(token).digest
    except pki_tokens.TokenError as exc:
        raise JoinError(str(exc)) from None
    ca_pem = fetch_ca(host, port, digest)
    request = JoinRequest(token=token, csr=csr.decode(), name=name,
                          advertise_addr=advertise_addr)
    status, body = _request(host, port, pinned_context(ca_pem), "POST", "/join",
                            encode(request.to_json()))
    data = _answer(status, body, "the join")
    try:
        return JoinResponse.from_json(data)
    except Refusal as exc:
        raise JoinError(exc.message) from None


def promote(host: str, port: int, ca_pem: bytes, cert: str, key: str,
            advertise_addr: str) -> JoinResponse:
    """What this (promoted) node needs to become a manager, asked with its certificate."""
    status, body = _request(host, port, pinned_context(ca_pem, cert, key), "POST",
                            "/promote", encode({"advertise_addr": advertise_addr}))
    data = _answer(status, body, "the promotion")
    try:
        return JoinResponse.from_json(data)
    except Refusal as exc:
        raise JoinError(exc.message) from None


def renew(host: str, port: int, ca_pem: bytes, cert: str, key: str, csr: bytes) -> bytes:
    """A fresh certificate for the name ``cert`` carries, signed by a manager."""
    status, body = _request(host, port, pinned_context(ca_pem, cert, key), "POST", "/renew",
                            encode({"csr": csr.decode()}))
    data = _answer(status, body, "the renewal")
    new = data.get("cert")
    if not isinstance(new, str):
        raise JoinError("the renewal's answer holds no certificate")
    return new.encode()
