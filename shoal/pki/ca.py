"""The cluster CA: make one, save it as PEM, load it back.

An EC P-256 key and a self-signed certificate valid for ten years (Swarm's root CA
lives twenty; kubeadm's ten). P-256 rather than RSA: etcd, Go's TLS and grpc all speak
it, its keys are made in microseconds and its handshakes are cheaper, which matters for
swctl, which opens a fresh TLS connection on every command.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_LIFETIME = datetime.timedelta(days=3650)
CA_NAME = "shoal-cluster-ca"

# Leeway for clocks a little behind the issuer's: certificates start this much earlier.
BACKDATE = datetime.timedelta(minutes=5)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key_pem(data: bytes, where: str = "key") -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where} is not a PEM private key without a password ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{where} is not an EC key (Shoal's PKI uses P-256)")
    return key


def load_cert_pem(data: bytes, where: str = "certificate") -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ValueError(f"{where} is not a PEM certificate ({exc})") from None


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclasses.dataclass(frozen=True)
class CA:
    """The CA's certificate and, on managers, its key (None where only trust is needed)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | None = None

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def signing_key(self) -> ec.EllipticCurvePrivateKey:
        if self.key is None:
            raise ValueError("this node holds the cluster CA's certificate but not its key: "
                             "certificates are signed on a manager")
        return self.key

    def save(self, cert_path: Path, key_path: Path | None = None) -> None:
        """Write the certificate (world-readable) and the key (0600) as PEM."""
        write_file(cert_path, self.cert_pem, 0o644)
        if key_path is not None:
            write_file(key_path, key_pem(self.signing_key()), 0o600)


def make_ca(name: str = CA_NAME, lifetime: datetime.timedelta = CA_LIFETIME) -> CA:
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = now() - BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return CA(cert, key)


def load_ca(cert_path: Path, key_path: Path | None = None) -> CA:
    """The CA from PEM files; ``key_path`` only where certificates are signed."""
    cert = load_cert_pem(read_file(cert_path), str(cert_path))
    key = load_key_pem(read_file(key_path), str(key_path)) if key_path is not None else None
    return CA(cert, key)


def read_file(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with ``mode`` from the start: a key is never readable by others,
    and a crash mid-write never leaves half a PEM behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
