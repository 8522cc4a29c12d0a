"""What a manager answers on its join endpoint: who may join, as what, with what.

What it owns: the steps of ``POST /join``, ``/promote`` and ``/renew`` on a manager, in
an order that makes a crash or a retry at any point harmless:

1. the token is checked against the record in etcd (``tokens.check``): a wrong, rotated
   or foreign token is refused before anything is written;
2. the CSR is checked and the node's name must be free (a ready node of that name at
   another address is another machine: refused);
3. the node's etcd user and role are made (``access.grant_node``, idempotent);
4. its certificate is signed (CN ``shoal:node:<name>``; nothing is stored);
5. for a manager, the etcd member is added last (``member_add``), unless a member with
   its peer URL is already there -- a retried join reuses it. Adding a member raises the
   quorum at once, so nothing after it writes to etcd.

A joiner that dies after step 5 and never starts its member leaves an unstarted member
behind; ``swctl join`` run again reuses it, and ``swctl node rm``/``demote`` removes it.

``/promote`` is step 5 for a node already joined, asked with its own certificate
once its Node's role is manager (``swctl role-watch`` asks). ``/renew`` signs a fresh
certificate for exactly the name the client's current certificate carries, while that
Node exists: a removed node cannot renew its way back in.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable
from typing import Final, TypeVar

import structlog
from cryptography import x509

from shoal.crds import kinds, resource, sealed
from shoal.join import access, datadir, managers, membership, server, tokens
from shoal.join.protocol import (
    JoinRequest,
    JoinResponse,
    ManagerMaterial,
    Refusal,
    decode,
    encode,
)
from shoal.pki import ca as pki_ca
from shoal.pki import certs
from shoal.store import client, etcd, retry
from shoal.store import errors as store_errors

log = structlog.get_logger("shoal.join.service")
T = TypeVar("T")

ETCD_CLIENT_PORT: Final = 2379
ETCD_PEER_PORT: Final = 2380


def join_addrs_prefix(prefix: str) -> bytes:
    """``<prefix>/cluster/join-endpoints/<node>`` = ``ADDR:PORT`` of each manager's endpoint."""
    return f"/{prefix.strip('/')}/cluster/join-endpoints/".encode()


async def list_join_addrs(etcd_client: etcd.EtcdClient, prefix: str) -> list[str]:
    start = join_addrs_prefix(prefix)
    kvs, _, _ = await etcd_client.range(start, etcd.prefix_end(start))
    return sorted(kv.value.decode() for kv in kvs)


async def publish_join_addr(etcd_client: etcd.EtcdClient, prefix: str, node: str,
                            addr: str) -> None:
    await etcd_client.put(join_addrs_prefix(prefix) + node.encode(), addr.encode())


async def forget_join_addr(etcd_client: etcd.EtcdClient, prefix: str, node: str) -> None:
    # One key, not a prefix: forgetting node-1 must not forget node-10. Retried (a
    # delete is idempotent): right after a demote the call may land on the member just
    # removed, which answers "raft: stopped".
    key = join_addrs_prefix(prefix) + node.encode()
    await retry.call(retry.DEFAULT, "txn", lambda: etcd_client.txn([], [etcd.op_delete(key)]),
                     key.decode())


def url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def client_urls(members: list[etcd.Member]) -> list[str]:
    return sorted({u for m in members for u in m.client_urls})


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What a manager reads from its data dir to sign and to hand to joining managers."""

    ca_pem: bytes
    ca_key_pem: bytes
    root_cert: bytes
    root_key: bytes
    keyring: sealed.Keyring

    @classmethod
    def load(cls, layout: datadir.Layout) -> Credentials:
        return cls(ca_pem=layout.ca_cert.read_bytes(), ca_key_pem=layout.key("ca").read_bytes(),
                   root_cert=layout.cert("root").read_bytes(),
                   root_key=layout.key("root").read_bytes(),
                   keyring=sealed.load(layout.keyring))


class JoinService:
    """The join endpoint's answers on one manager, over its store (etcd as root)."""

    def __init__(self, store: client.Store, creds: Credentials) -> None:
        self.store = store
        self.etcd = store.etcd
        self.prefix = store.prefix
        self.creds = creds
        self._ca = pki_ca.CA(pki_ca.load_cert_pem(creds.ca_pem, "the cluster CA"),
                             pki_ca.load_key_pem(creds.ca_key_pem, "the cluster CA key"))
        self._nodes = kinds.Registry.builtin().lookup("nodes")

    # --- routes (server.Handler) ---

    async def get_ca(self, body: bytes, peer: str) -> tuple[int, str, bytes]:
        return 200, "application/x-pem-file", self.creds.ca_pem

    async def post_join(self, body: bytes, peer: str) -> tuple[int, str, bytes]:
        request = JoinRequest.from_json(decode(body, "POST /join"))
        response = await self.join(request)
        return 200, "application/json", encode(response.to_json())

    async def post_renew(self, body: bytes, peer: str) -> tuple[int, str, bytes]:
        data = decode(body, "POST /renew")
        csr = data.get("csr")
        if not isinstance(csr, str):
            raise Refusal(400, 'POST /renew: "csr" is missing')
        cert = await self.renew(csr.encode(), peer)
        return 200, "application/json", json.dumps({"cert": cert.decode()}).encode()

    async def post_promote(self, body: bytes, peer: str) -> tuple[int, str, bytes]:
        data = decode(body, "POST /promote")
        addr = data.get("advertise_addr")
        if not isinstance(addr, str) or not addr:
            raise Refusal(400, 'POST /promote: "advertise_addr" is missing')
        response = await self.promote(addr, peer)
        return 200, "application/json", encode(response.to_json())

    def routes(self) -> dict[str, server.Handler]:
        return {"GET /ca": self.get_ca, "POST /join": self.post_join,
                "POST /renew": self.post_renew, "POST /promote": self.post_promote}

    # --- the steps ---

    async def join(self, req: JoinRequest) -> JoinResponse:
        found = await self._unavailable_as_503(tokens.load(self.etcd, self.prefix))
        if found is None:
            raise Refusal(503, "this cluster has no join tokens yet: it was not made with "
                               "`swctl init`, or init has not finished")
        role = tokens.check(found, req.token, self.creds.ca_pem)
        try:
            csr = certs.load_csr_pem(req.csr.encode())
        except ValueError as exc:
            raise Refusal(400, f"POST /join: {exc}") from None
        members = await self._unavailable_as_503(self.etcd.member_list())
        await self._check_name_free(req, members, role)
        await self._unavailable_as_503(access.grant_node(self.etcd, self.prefix, req.name))
        await self._unavailable_as_503(self._register_node(req.name, role))
        cert = certs.sign_csr(self._ca, csr, certs.node_user(req.name))
        # Read before a member is added: from then on the quorum waits for the new one.
        join_addrs = await self._unavailable_as_503(list_join_addrs(self.etcd, self.prefix))
        material = await self._manager_material(req.name, req.advertise_addr, members) \
            if role == "manager" else None
        log.info("node joined", node=req.name, role=role, address=req.advertise_addr)
        return self._answer(role, cert, members, material, req.advertise_addr, join_addrs)

    async def promote(self, advertise_addr: str, peer: str) -> JoinResponse:
        """A promoted worker becoming a manager: its etcd member and manager material.

        Asked by the node itself (``swctl node promote`` only changes the Node's role),
        with its node certificate; granted while its Node's ``spec.role`` is manager.
        """
        name = self._node_of(peer, "POST /promote")
        try:
            node = await self.store.get(self._nodes, name)
        except store_errors.NotFoundError:
            raise Refusal(403, f"node {name} has been removed from the cluster") from None
        if node.spec.get("role") != "manager":
            raise Refusal(409, f"node {name} is not promoted: run `swctl node promote {name}` "
                               "on a manager first")
        members = await self._unavailable_as_503(self.etcd.member_list())
        join_addrs = await self._unavailable_as_503(list_join_addrs(self.etcd, self.prefix))
        material = await self._manager_material(name, advertise_addr, members)
        log.info("node promoted", node=name, address=advertise_addr)
        return self._answer("manager", None, members, material, advertise_addr, join_addrs)

    async def _manager_material(self, name: str, advertise_addr: str,
                                members: list[etcd.Member]) -> ManagerMaterial:
        """Adds the etcd member (last: it raises the quorum at once) unless a member with
        its peer URL is there already (a retry), and what a manager needs to run one."""
        peer_url = url("https", advertise_addr, ETCD_PEER_PORT)
        if not any(peer_url in m.peer_urls for m in members):
            members[:] = await self._member_add(peer_url)
            log.info("etcd member added", node=name, peer_url=peer_url)
        plain = [managers.Member(m.id, m.name, m.peer_urls, m.client_urls) for m in members]
        return ManagerMaterial(
            ca_key=self.creds.ca_key_pem.decode(), root_cert=self.creds.root_cert.decode(),
            root_key=self.creds.root_key.decode(), keyring=self.creds.keyring.to_json(),
            initial_cluster=managers.initial_cluster(plain, name, peer_url), peer_url=peer_url)

    async def _member_add(self, peer_url: str) -> list[etcd.Member]:
        """``member_add``, waiting while etcd says the cluster is not ready for one
        (``membership.through_reconfig_check``): a manager joining right after another
        waits until the first has settled."""
        try:
            _, members = await membership.through_reconfig_check(
                lambda: self.etcd.member_add([peer_url]))
        except store_errors.UnavailableError as exc:
            raise Refusal(503, f"etcd does not admit a new member now ({exc}); "
                               "bring every manager up and try again") from None
        return members

    def _answer(self, role: str, cert: x509.Certificate | None, members: list[etcd.Member],
                material: ManagerMaterial | None, advertise_addr: str,
                join_addrs: list[str]) -> JoinResponse:
        endpoints = set(client_urls(members))
        if material is not None:  # the new member's own, not serving yet
            endpoints.add(url("https", advertise_addr, ETCD_CLIENT_PORT))
        return JoinResponse(role=role, cert=pki_ca.cert_pem(cert).decode() if cert else "",
                            ca=self.creds.ca_pem.decode(), endpoints=tuple(sorted(endpoints)),
                            prefix=self.prefix, join_addrs=tuple(join_addrs), manager=material)

    def _node_of(self, peer: str, route: str) -> str:
        if not peer.startswith(certs.NODE_USER_PREFIX):
            raise Refusal(403, f"{route} needs the node's current certificate (issued by this "
                               "cluster's CA) as the TLS client certificate")
        return peer[len(certs.NODE_USER_PREFIX):]

    async def renew(self, csr: bytes, peer: str) -> bytes:
        name = self._node_of(peer, "POST /renew")
        try:
            await self.store.get(self._nodes, name)
        except store_errors.NotFoundError:
            raise Refusal(403, f"node {name} has been removed from the cluster: join it "
                               "again with a token") from None
        try:
            request = certs.load_csr_pem(csr)
        except ValueError as exc:
            raise Refusal(400, f"POST /renew: {exc}") from None
        log.info("node certificate renewed", node=name)
        return pki_ca.cert_pem(certs.sign_csr(self._ca, request, peer))

    async def _register_node(self, name: str, role: str) -> None:
        """The Node, made here with the role of the token it joined with: the fold
        writes ``spec`` only for a Node it creates, from the agent's own report, and a
        worker's report must not be what makes it a manager (docs/security.md). A Node
        that exists (a re-join) keeps its role: promote and demote decide it then."""
        node = resource.Resource("Node", resource.ObjectMeta(name=name),
                                 {"role": role, "availability": "active"}, {})
        try:
            await self.store.create(self._nodes, node)
            log.info("node registered", key=f"node/{name}", role=role)
        except store_errors.AlreadyExistsError:
            pass

    async def _check_name_free(self, req: JoinRequest, members: list[etcd.Member],
                               role: str) -> None:
        try:
            node = await self.store.get(self._nodes, req.name)
        except store_errors.NotFoundError:
            node = None
        if node is not None and node.status.get("state") == "ready" and \
                node.status.get("address") not in (None, req.advertise_addr):
            raise Refusal(409, f"a node named {req.name} is already in the cluster and ready "
                               f"(at {node.status.get('address')}): join under another name "
                               f"with --name, or remove it first with `swctl node rm "
                               f"{req.name}`")
        peer_url = url("https", req.advertise_addr, ETCD_PEER_PORT)
        for m in members:
            if m.name == req.name and peer_url not in m.peer_urls:
                raise Refusal(409, f"a manager named {req.name} is already an etcd member "
                                   f"(at {', '.join(m.peer_urls)}): join under another "
                                   "name with --name")

    @staticmethod
    async def _unavailable_as_503(call: Awaitable[T]) -> T:
        try:
            return await call
        except store_errors.UnavailableError as exc:
            raise Refusal(503, f"this manager cannot reach etcd right now ({exc}); try "
                               "another manager or again shortly") from None
