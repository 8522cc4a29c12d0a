"""Keeping a node's certificate valid: renewed through a manager's join endpoint well
before it expires.

What it owns: when to renew (a third of the certificate's lifetime before its end: 30
days of a 90-day certificate, so a node that is off for weeks still comes back valid),
and doing it safely. The node's key stays the same -- only the certificate file is
replaced, atomically -- so a crash at any point leaves a matching key and certificate
(the old or the new). The manager signs only the name the current certificate carries,
and only while that node still exists (``service.JoinService.renew``), so a removed node
cannot renew its way back.

A manager holds the CA key and re-signs its own certificates (node, root, etcd server
and peer) locally. ``swctl role-watch``, which runs on every node, calls
:func:`renew_due` hourly. Connections already open keep their TLS session; a process
picks the new file up the next time it connects (the store's client reads the files
when it connects; etcd reads its own on every handshake).
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import structlog
from cryptography.hazmat.primitives import serialization

from shoal.join import client, datadir, protocol
from shoal.pki import ca as pki_ca
from shoal.pki import certs

log = structlog.get_logger("shoal.join.renewal")

#: How often ``swctl role-watch`` looks (and retries while no manager answers).
CHECK_EVERY: Final = 3600.0
RETRY_EVERY: Final = 60.0


def renew_before(cert_lifetime: datetime.timedelta) -> datetime.timedelta:
    return cert_lifetime / 3


def due(cert_pem: bytes, now: datetime.datetime | None = None) -> bool:
    """Is the certificate in its last third of life (or past it)?"""
    cert = pki_ca.load_cert_pem(cert_pem)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return certs.expires_within(cert, renew_before(lifetime), now)


def renew_once(ca: Path, cert: Path, key: Path, join_addrs: Sequence[str]) -> bool:
    """Renew ``cert`` through the first manager that answers; False if none did."""
    ca_pem = ca.read_bytes()
    csr = certs.make_csr(pki_ca.load_key_pem(key.read_bytes()), certs.common_name(
        pki_ca.load_cert_pem(cert.read_bytes()))).public_bytes(serialization.Encoding.PEM)
    addrs = list(join_addrs)
    random.shuffle(addrs)  # spread renewals over the managers
    for addr in addrs:
        host, port = protocol.split_addr(addr)
        try:
            new = client.renew(host, port, ca_pem, str(cert), str(key), csr)
        except client.JoinError as exc:
            log.warning("certificate renewal failed", via=addr, cert=str(cert), error=str(exc))
            continue
        datadir.write_atomic(cert, new)
        log.info("certificate renewed", via=addr, cert=str(cert))
        return True
    return False


def renew_locally(ca: pki_ca.CA, cert: Path, key: Path, server_hosts: Sequence[str] = (),
                  ) -> None:
    """Re-sign ``cert`` with the CA key this manager holds: same key, same name, and for
    a server or peer certificate the same kind with ``server_hosts``; the usual
    lifetime of its kind."""
    old = pki_ca.load_cert_pem(cert.read_bytes())
    csr = certs.make_csr(pki_ca.load_key_pem(key.read_bytes()), certs.common_name(old))
    lifetime = certs.SERVICE_CERT_LIFETIME if server_hosts else certs.NODE_CERT_LIFETIME
    new = certs.sign_csr(ca, csr, certs.common_name(old), lifetime,
                         server_hosts=list(server_hosts) if server_hosts else None)
    datadir.write_atomic(cert, pki_ca.cert_pem(new))
    log.info("certificate renewed with the local CA", cert=str(cert))


def renew_due(layout: datadir.Layout, cfg: datadir.NodeConfig) -> list[str]:
    """Renew whatever in ``layout`` is due; the names renewed. A manager signs its own
    (it holds the CA key); a worker asks a manager for its node certificate."""
    renewed = []
    manager = layout.key("ca").exists()
    ca = pki_ca.load_ca(layout.ca_cert, layout.key("ca")) if manager else None
    hosts = list(dict.fromkeys([cfg.advertise_addr, "127.0.0.1"]))
    for name in ("node", "root", "etcd-server", "etcd-peer"):
        cert, key = layout.cert(name), layout.key(name)
        if not cert.exists() or not key.exists() or not due(cert.read_bytes()):
            continue
        if ca is not None:
            renew_locally(ca, cert, key, hosts if name.startswith("etcd-") else ())
        elif name != "node" or not renew_once(layout.ca_cert, cert, key, cfg.join_addrs):
            continue
        renewed.append(name)
    return renewed
