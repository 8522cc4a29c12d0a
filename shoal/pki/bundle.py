"""Where a process finds its TLS material: a CA, a certificate and its key, as files.

``Bundle`` is a client's (or a node endpoint's) set: the CA it trusts and the
certificate it presents. ``ServerTLS`` is an etcd member's: the CA it trusts for clients
and peers, its client-facing and its peer certificates. Both name files rather than
holding bytes, because etcd reads files and a renewed certificate is picked up by
re-reading them. SSL contexts for Python servers and clients (agents' endpoints, the
lease keepalive stream) are built here, once, with the same rules.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from pathlib import Path

# The environment's names for --etcd-ca, --etcd-cert and --etcd-key (every Shoal process).
ENV_CA = "SHOAL_ETCD_CA"
ENV_CERT = "SHOAL_ETCD_CERT"
ENV_KEY = "SHOAL_ETCD_KEY"


@dataclasses.dataclass(frozen=True)
class Bundle:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, directory: Path | str, name: str = "node") -> Bundle:
        """``DIR/ca.crt``, ``DIR/<name>.crt``, ``DIR/<name>.key``, each checked to exist."""
        d = Path(directory)
        bundle = cls(d / "ca.crt", d / f"{name}.crt", d / f"{name}.key")
        bundle.check()
        return bundle

    @classmethod
    def from_options(cls, ca: str | None, cert: str | None, key: str | None,
                     flag: str = "--etcd") -> Bundle | None:
        """From ``--etcd-ca/--etcd-cert/--etcd-key``-style options: all three or none."""
        given = {"ca": ca, "cert": cert, "key": key}
        if not any(given.values()):
            return None
        missing = [f"{flag}-{name}" for name, value in given.items() if not value]
        if missing:
            raise ValueError(f"TLS needs {flag}-ca, {flag}-cert and {flag}-key together; "
                             f"missing {', '.join(missing)}")
        bundle = cls(Path(ca or ""), Path(cert or ""), Path(key or ""))
        bundle.check()
        return bundle

    @classmethod
    def resolve(cls, ca: str | None, cert: str | None, key: str | None) -> Bundle | None:
        """``--etcd-ca/--etcd-cert/--etcd-key``, each else ``$SHOAL_ETCD_CA/CERT/KEY``:
        the one rule swctl, the agent and the controller-manager share."""
        return cls.from_options(ca or os.environ.get(ENV_CA) or None,
                                cert or os.environ.get(ENV_CERT) or None,
                                key or os.environ.get(ENV_KEY) or None)

    def check(self) -> None:
        for what, path in (("CA certificate", self.ca), ("certificate", self.cert),
                           ("key", self.key)):
            if not path.is_file():
                raise ValueError(f"TLS {what} {path} does not exist (or is not a file)")

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA PEM, certificate PEM, key PEM)."""
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()

    def client_context(self, alpn: list[str] | None = None,
                       check_hostname: bool = True) -> ssl.SSLContext:
        """Trust only the cluster CA; present this bundle's certificate. Without
        ``check_hostname`` the caller identifies the server by its CN (``peer_cn``)."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.check_hostname = check_hostname
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """Serve this bundle's certificate; demand a client certificate from the CA."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def peer_cn(peercert: object) -> str:
    """The CN of a verified peer certificate as ``SSLSocket.getpeercert()`` gives it
    ('' when there is none)."""
    if not isinstance(peercert, dict):
        return ""
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


@dataclasses.dataclass(frozen=True)
class ServerTLS:
    """An etcd member's TLS: clients and peers must present certificates from ``ca``."""

    ca: Path
    cert: Path
    key: Path
    peer_cert: Path
    peer_key: Path

    def client_bundle(self) -> Bundle:
        """The peer certificate as a client one (it carries clientAuth), for probing
        the member's own /health."""
        return Bundle(self.ca, self.peer_cert, self.peer_key)

