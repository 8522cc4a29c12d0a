"""The join endpoint's messages, pure: what a joiner sends, what a manager answers.

What it owns: the shape and validation of ``POST /join`` and ``POST /renew`` bodies and
of their answers, and the refusal vocabulary (:class:`Refusal`: an HTTP status and a
message the joiner prints as is). The server (``server``) and the client (``client``)
both go through here, so neither can drift from the other.

Protocol (HTTPS only, port 4243 by default; docs/cluster.md)::

    GET  /ca     -> 200 the cluster CA certificate (PEM); no client certificate needed:
                    the joiner checks it against the digest in its token, not by trust
    POST /join   {token, csr, name, advertise_addr}
                 -> 200 {role, cert, ca, endpoints, prefix, join_addrs,
                         and for a manager: ca_key, root_cert, root_key, keyring,
                         initial_cluster, peer_url}
                 -> 4xx {error: "..."}: a wrong, rotated or foreign token, a bad CSR,
                    a name in use
    POST /renew  {csr} with the node's current certificate as TLS client certificate
                 -> 200 {cert}: the same subject, a fresh validity
    POST /promote {advertise_addr} with the node's certificate, once ``swctl node
                 promote`` has set its Node's role -> 200 the manager's part of /join

Why the manager's answer carries the CA key and root credentials: a manager runs an etcd
member and signs joiners' certificates itself, as every Swarm manager holds the root CA
key (swarmkit's default internal CA); a worker's answer carries only its own certificate.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Final

from shoal.crds import names

DEFAULT_PORT: Final = 4243
MAX_BODY: Final = 64 * 1024
#: The name every server certificate of the cluster carries besides its addresses, so a
#: client can verify any manager by one name (etcd's SAN, shared with the etcd members).
SERVER_NAME: Final = "etcd.shoal"


class Refusal(Exception):
    """The endpoint's refusal: ``status`` for HTTP, ``message`` for the person joining."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def _field(data: dict[str, Any], name: str, where: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise Refusal(400, f'{where}: "{name}" is missing or not a string')
    return value


def decode(body: bytes, where: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        raise Refusal(400, f"{where}: the body is not JSON") from None
    if not isinstance(data, dict):
        raise Refusal(400, f"{where}: the body is not a JSON object")
    return data


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


@dataclasses.dataclass(frozen=True)
class JoinRequest:
    token: str
    csr: str  # PEM
    name: str
    advertise_addr: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JoinRequest:
        where = "POST /join"
        req = cls(token=_field(data, "token", where), csr=_field(data, "csr", where),
                  name=_field(data, "name", where),
                  advertise_addr=_field(data, "advertise_addr", where))
        problem = names.name_error(req.name)
        if problem:
            raise Refusal(400, f"node name {problem} (give another with --name)")
        return req


@dataclasses.dataclass(frozen=True)
class ManagerMaterial:
    """What only a joining manager gets: the means to run an etcd member and sign."""

    ca_key: str
    root_cert: str
    root_key: str
    keyring: dict[str, Any]
    initial_cluster: str
    peer_url: str


@dataclasses.dataclass(frozen=True)
class JoinResponse:
    role: str
    cert: str
    ca: str
    endpoints: tuple[str, ...]
    prefix: str
    join_addrs: tuple[str, ...]
    manager: ManagerMaterial | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "cert": self.cert, "ca": self.ca,
                               "endpoints": list(self.endpoints), "prefix": self.prefix,
                               "join_addrs": list(self.join_addrs)}
        if self.manager is not None:
            out.update(dataclasses.asdict(self.manager))
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JoinResponse:
        where = "the join endpoint's answer"
        role = _field(data, "role", where)
        endpoints = data.get("endpoints")
        join_addrs = data.get("join_addrs", [])
        if not isinstance(endpoints, list) or not endpoints or \
                not all(isinstance(e, str) for e in endpoints):
            raise Refusal(502, f'{where}: "endpoints" is not a list of URLs')
        if not isinstance(join_addrs, list) or not all(isinstance(a, str) for a in join_addrs):
            raise Refusal(502, f'{where}: "join_addrs" is not a list of addresses')
        manager = None
        if role == "manager":
            keyring = data.get("keyring")
            if not isinstance(keyring, dict):
                raise Refusal(502, f'{where}: "keyring" is missing')
            manager = ManagerMaterial(
                ca_key=_field(data, "ca_key", where), root_cert=_field(data, "root_cert", where),
                root_key=_field(data, "root_key", where), keyring=keyring,
                initial_cluster=_field(data, "initial_cluster", where),
                peer_url=_field(data, "peer_url", where))
        elif role != "worker":
            raise Refusal(502, f'{where}: "role" is {role!r}, not manager or worker')
        cert = data.get("cert", "")  # "" in a promotion's answer: the node keeps its own
        if not isinstance(cert, str):
            raise Refusal(502, f'{where}: "cert" is not a string')
        return cls(role=role, cert=cert, ca=_field(data, "ca", where),
                   endpoints=tuple(endpoints), prefix=_field(data, "prefix", where),
                   join_addrs=tuple(join_addrs), manager=manager)


def split_addr(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST[:PORT]`` (``[v6]:PORT`` too) of ``swctl join``; a URL scheme is refused
    with why: the endpoint speaks HTTPS pinned to the token's CA, nothing else."""
    if "://" in text:
        scheme = text.split("://", 1)[0]
        if scheme != "https":
            raise ValueError(f'"{text}": the join endpoint speaks only HTTPS, pinned to the '
                             "CA in the token; give the manager as ADDR[:PORT] without "
                             f"{scheme}://")
        text = text.split("://", 1)[1].rstrip("/")
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f'"{text}" names no manager: give ADDR[:PORT], e.g. '
                         f"10.0.0.1:{default_port}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f'"{text}": the port "{port_text}" is not a number from 1 to 65535')
    return host, int(port_text)


def join_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
