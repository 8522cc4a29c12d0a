"""Certificates the cluster CA issues, and their expiry.

Three shapes, one per job:

* **server** (etcd's client port, the join endpoint, agents' log endpoints): the names
  and addresses clients dial, plus the fixed name ``etcd.shoal`` (``ETCD_SERVER_NAME``)
  that Shoal's etcd clients verify, so one client channel can span every member
  whatever their addresses. serverAuth and clientAuth: etcd dials its own gRPC gateway
  with its server certificate.
* **peer** (etcd member to member): the member's addresses; serverAuth and clientAuth,
  since each member is both ends of a peer connection.
* **client** (agents, controller-managers, swctl): CN = the etcd user the holder acts as
  (``root``, ``shoal:node:<name>``); etcd's client-certificate auth takes the CN as the
  user name. clientAuth and serverAuth: a node's one certificate also serves its own
  endpoints (task logs) over TLS, where clients identify the node by the CN.

A CSR is signed into a client certificate with the CN the *signer* chooses, never the
one the CSR asks for: a joining node proves it holds the token, not that it may pick
its own etcd user.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.pki.ca import BACKDATE, CA, new_key, now

# The name every etcd server certificate carries and every Shoal etcd client checks.
ETCD_SERVER_NAME = "etcd.shoal"

# Swarm's node certificates last 90 days (docker swarm --cert-expiry 2160h) and are
# renewed by the node; Shoal's agents do the same with theirs.
NODE_CERT_LIFETIME = datetime.timedelta(days=90)
# Certificates renewed by a person or an upgrade, not a loop (etcd's server and peer
# certificates, the admin's root certificate): a year, as kubeadm issues them.
SERVICE_CERT_LIFETIME = datetime.timedelta(days=365)

ROOT_USER = "root"
NODE_USER_PREFIX = "shoal:node:"


def node_user(node: str) -> str:
    """The etcd user (and certificate CN) of a worker node."""
    return NODE_USER_PREFIX + node


Issued = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # de-duplicated, order kept
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


def _build(ca: CA, public_key: ec.EllipticCurvePublicKey, cn: str,
           usages: list[x509.ObjectIdentifier], hosts: Iterable[str],
           lifetime: datetime.timedelta) -> x509.Certificate:
    start = now() - BACKDATE
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + lifetime, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                     content_commitment=False, data_encipherment=False,
                                     key_agreement=True, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.cert.public_key()), critical=False)  # type: ignore[arg-type]
    )
    names = _names(hosts)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca.signing_key(), hashes.SHA256())


_SERVER = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
_CLIENT = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]


def issue_server(ca: CA, hosts: Iterable[str], cn: str = ETCD_SERVER_NAME,
                 lifetime: datetime.timedelta = SERVICE_CERT_LIFETIME) -> Issued:
    """A server certificate for ``hosts`` (addresses and names) and ``etcd.shoal``."""
    key = new_key()
    cert = _build(ca, key.public_key(), cn, _SERVER,
                  [ETCD_SERVER_NAME, *hosts], lifetime)
    return cert, key


def issue_peer(ca: CA, hosts: Iterable[str], cn: str = "etcd-peer",
               lifetime: datetime.timedelta = SERVICE_CERT_LIFETIME) -> Issued:
    """An etcd peer certificate for the member's peer ``hosts``."""
    key = new_key()
    return _build(ca, key.public_key(), cn, _SERVER, [ETCD_SERVER_NAME, *hosts], lifetime), key


def issue_client(ca: CA, user: str,
                 lifetime: datetime.timedelta = NODE_CERT_LIFETIME) -> Issued:
    """A client certificate acting as etcd user ``user`` (its CN)."""
    key = new_key()
    return _build(ca, key.public_key(), user, _CLIENT, [], lifetime), key


def make_csr(key: ec.EllipticCurvePrivateKey, cn: str) -> x509.CertificateSigningRequest:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .sign(key, hashes.SHA256()))


def load_csr_pem(data: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise ValueError(f"the certificate request is not a PEM CSR ({exc})") from None
    if not csr.is_signature_valid:
        raise ValueError("the certificate request's signature does not match its key")
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
        raise ValueError("the certificate request's key is not an EC key (use P-256)")
    return csr


def sign_csr(ca: CA, csr: x509.CertificateSigningRequest, user: str,
             lifetime: datetime.timedelta = NODE_CERT_LIFETIME,
             server_hosts: Iterable[str] | None = None) -> x509.Certificate:
    """Sign ``csr``'s key into a client certificate for etcd user ``user``; with
    ``server_hosts``, a server certificate for those hosts instead (CN ``user``).

    The CSR's own subject and extensions are ignored: the signer decides both."""
    if not csr.is_signature_valid:
        raise ValueError("the certificate request's signature does not match its key")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ValueError("the certificate request's key is not an EC key (use P-256)")
    if server_hosts is not None:
        return _build(ca, public_key, user, _SERVER, [ETCD_SERVER_NAME, *server_hosts],
                      lifetime)
    return _build(ca, public_key, user, _CLIENT, [], lifetime)


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def expires_within(cert: x509.Certificate, delta: datetime.timedelta,
                   at: datetime.datetime | None = None) -> bool:
    """True when ``cert`` is no longer valid ``delta`` from now (time to renew)."""
    return cert.not_valid_after_utc <= (at or now()) + delta


def issued_by(cert: x509.Certificate, ca: CA) -> bool:
    """True when ``ca`` signed ``cert`` (its signature verifies with the CA's key)."""
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
