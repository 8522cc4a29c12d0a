"""The few certificate and token operations the join path needs, until ``shoal.pki``
(the transport branch) provides them; then this module goes and its callers import
``shoal.pki``. Pure, on ``cryptography``.

What it owns for now: a CA (EC P-256), certificates for servers (SANs: addresses and
``etcd.shoal``), peers and clients (CN = the etcd user), signing a joiner's CSR, and
Swarm-style join tokens ``SWMTKN-1-<CA digest>-<secret>``: the digest is the SHA-256 of
the CA certificate's DER in base 36 (50 digits), the secret 25 base-36 digits.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Sequence
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TOKEN_PREFIX: Final = "SWMTKN"
TOKEN_VERSION: Final = "1"
DIGEST_LEN: Final = 50
SECRET_LEN: Final = 25
CA_DAYS: Final = 3650
CERT_DAYS: Final = 90
SERVER_NAME: Final = "etcd.shoal"
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


class TokenError(ValueError):
    """A join token that is not one (wrong shape); its message says what is wrong."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(name: str = "shoal cluster CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, SERVER_NAME]):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


def issue(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
          public_key: ec.EllipticCurvePublicKey, common_name: str, *,
          server_hosts: Sequence[str] = (), client: bool = True,
          days: int = CERT_DAYS) -> x509.Certificate:
    """A certificate for ``public_key``: CN ``common_name`` (the etcd user of a client),
    client auth, and server auth with SANs when ``server_hosts`` is given."""
    now = _now()
    usages = ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []) + \
        ([ExtendedKeyUsageOID.SERVER_AUTH] if server_hosts else [])
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca.subject).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if server_hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_sans(server_hosts)),
                                        critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def csr_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    """The CSR's key once its self-signature checks; ValueError otherwise. The subject
    it asks for is ignored: the signer decides the name."""
    csr = x509.load_pem_x509_csr(pem)
    if not csr.is_signature_valid:
        raise ValueError("the CSR's signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the CSR's key is not an EC key")
    return key


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


# --- join tokens ---

def _base36(value: int, width: int) -> str:
    digits = []
    while value:
        value, rem = divmod(value, 36)
        digits.append(_B36[rem])
    return "".join(reversed(digits)).rjust(width, "0")[-width:]


def ca_digest(ca_pem: bytes) -> str:
    der = load_cert(ca_pem).public_bytes(serialization.Encoding.DER)
    return _base36(int.from_bytes(hashlib.sha256(der).digest(), "big"), DIGEST_LEN)


def new_secret() -> str:
    return "".join(secrets.choice(_B36) for _ in range(SECRET_LEN))


def make_token(ca_pem: bytes, secret: str) -> str:
    return f"{TOKEN_PREFIX}-{TOKEN_VERSION}-{ca_digest(ca_pem)}-{secret}"


def parse_token(token: str) -> tuple[str, str]:
    """(CA digest, secret) of a join token; TokenError says what is malformed."""
    parts = token.strip().split("-")
    if len(parts) != 4 or parts[0] != TOKEN_PREFIX:
        raise TokenError("not a join token: expected SWMTKN-1-<digest>-<secret> (print one "
                         "with `swctl join-token worker` on a manager)")
    if parts[1] != TOKEN_VERSION:
        raise TokenError(f"join token version {parts[1]!r} is not supported (expected "
                         f"{TOKEN_VERSION})")
    digest, secret = parts[2], parts[3]
    if len(digest) != DIGEST_LEN or any(c not in _B36 for c in digest):
        raise TokenError(f"the join token's CA digest is not {DIGEST_LEN} base-36 digits: "
                         "the token is damaged (copy it again)")
    if len(secret) != SECRET_LEN or any(c not in _B36 for c in secret):
        raise TokenError(f"the join token's secret is not {SECRET_LEN} base-36 digits: the "
                         "token is damaged (copy it again)")
    return digest, secret


def secret_hash(secret: str) -> str:
    """What etcd keeps of a token's secret: its SHA-256 (the secret is random, so a plain
    hash cannot be guessed back)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
