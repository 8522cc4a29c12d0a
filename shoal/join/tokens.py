"""The cluster's two join tokens as etcd keeps them, and the check a join goes through.

What it owns: the record at ``<prefix>/cluster/join-tokens`` and the decision whether a
presented token admits a node, and as what. The record holds, per role (worker, manager),
the SHA-256 of the current secret, the secret itself sealed under the cluster keyring
(so ``swctl join-token`` on any manager can print it, while a reader of etcd without the
keyring -- a worker, a backup -- learns nothing usable), and the hashes of secrets
rotated away (so a rotated token is refused as *rotated*, not as unknown)::

    {"worker":  {"hash": HEX, "sealed": {...}, "previous": [HEX, ...], "rotatedAt": ISO},
     "manager": {...}}

Every write is a compare-and-swap on the key's revision, so two managers rotating at once
cannot leave a token whose secret nobody holds.

The check (:func:`check`) is pure: the token's CA digest must be this cluster's (a token
of another cluster is refused as such, before the secret is looked at), then its secret
is compared in constant time with the current secrets of both roles.
"""

from __future__ import annotations

import dataclasses
import datetime
import hmac
import json
from typing import Any, Final

from shoal.crds import sealed
from shoal.join.protocol import Refusal
from shoal.pki import ca as pki_ca
from shoal.pki import tokens as pki_tokens
from shoal.store import etcd

ROLES: Final = ("worker", "manager")
KEEP_PREVIOUS: Final = 20  # rotated hashes remembered, to say "rotated" rather than "wrong"
_SEAL_NS: Final = "cluster"  # what a sealed secret is bound to: cluster/join-token-<role>


def record_key(prefix: str) -> bytes:
    return f"/{prefix.strip('/')}/cluster/join-tokens".encode()


@dataclasses.dataclass(frozen=True)
class RoleToken:
    hash: str
    sealed: dict[str, Any]
    previous: tuple[str, ...] = ()
    rotated_at: str = ""


@dataclasses.dataclass(frozen=True)
class Tokens:
    worker: RoleToken
    manager: RoleToken
    revision: int = 0  # the key's mod revision when read (0: not stored yet)

    def of(self, role: str) -> RoleToken:
        return self.worker if role == "worker" else self.manager

    def to_json(self) -> dict[str, Any]:
        return {role: {"hash": t.hash, "sealed": t.sealed, "previous": list(t.previous),
                       "rotatedAt": t.rotated_at}
                for role, t in (("worker", self.worker), ("manager", self.manager))}

    @classmethod
    def from_json(cls, data: Any, revision: int) -> Tokens:
        try:
            parts = {role: RoleToken(hash=str(data[role]["hash"]),
                                     sealed=dict(data[role]["sealed"]),
                                     previous=tuple(str(h) for h in data[role]["previous"]),
                                     rotated_at=str(data[role].get("rotatedAt", "")))
                     for role in ROLES}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the join-token record is damaged ({exc}): rotate both tokens "
                             "with `swctl join-token --rotate worker` and `... manager`") \
                from None
        return cls(parts["worker"], parts["manager"], revision)


def _new_role_token(ring: sealed.Keyring, role: str, previous: tuple[str, ...] = (),
                    ) -> tuple[RoleToken, str]:
    secret = pki_tokens.new_secret()
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return RoleToken(pki_tokens.secret_hash(secret),
                     ring.seal(secret.encode(), _SEAL_NS, f"join-token-{role}"),
                     previous[-KEEP_PREVIOUS:], now), secret


def generate(ring: sealed.Keyring) -> Tokens:
    return Tokens(_new_role_token(ring, "worker")[0], _new_role_token(ring, "manager")[0])


def rotated(tokens: Tokens, ring: sealed.Keyring, role: str) -> Tokens:
    old = tokens.of(role)
    fresh, _ = _new_role_token(ring, role, (*old.previous, old.hash))
    if role == "worker":
        return dataclasses.replace(tokens, worker=fresh)
    return dataclasses.replace(tokens, manager=fresh)


def token_text(tokens: Tokens, ring: sealed.Keyring, ca_pem: bytes, role: str) -> str:
    """The full ``SWMTKN-1-...`` token of ``role``, opened with the keyring."""
    secret = ring.open(tokens.of(role).sealed, _SEAL_NS, f"join-token-{role}").decode()
    return pki_tokens.make_token(_der(ca_pem), secret)


def _der(ca_pem: bytes) -> bytes:
    return pki_ca.CA(pki_ca.load_cert_pem(ca_pem, "the cluster CA")).der


def check(tokens: Tokens, token: str, ca_pem: bytes) -> str:
    """The role ``token`` admits; :class:`Refusal` (403) saying why it admits none."""
    try:
        parsed = pki_tokens.parse_token(token)
    except pki_tokens.TokenError as exc:
        raise Refusal(400, str(exc)) from None
    if not hmac.compare_digest(parsed.digest, pki_tokens.ca_digest(_der(ca_pem))):
        raise Refusal(403, "invalid join token: it was made for another cluster (its CA "
                           "digest does not match this cluster's CA); get a token from "
                           "this cluster with `swctl join-token worker` on one of its "
                           "managers")
    role = None
    for candidate in ROLES:
        # Both compared, in constant time, whatever the first gave.
        if pki_tokens.matches_hash(parsed, tokens.of(candidate).hash):
            role = candidate
    if role is not None:
        return role
    for candidate in ROLES:
        if any(pki_tokens.matches_hash(parsed, h) for h in tokens.of(candidate).previous):
            raise Refusal(403, f"invalid join token: this {candidate} token was rotated "
                               f"(the current one dates from "
                               f"{tokens.of(candidate).rotated_at}); get the current one "
                               f"with `swctl join-token {candidate}` on a manager")
    raise Refusal(403, "invalid join token: it matches neither the worker nor the manager "
                       "token of this cluster; get one with `swctl join-token worker` (or "
                       "manager) on a manager")


# --- in etcd ---

async def load(client: etcd.EtcdClient, prefix: str) -> Tokens | None:
    kvs, _, _ = await client.range(record_key(prefix))
    if not kvs:
        return None
    return Tokens.from_json(json.loads(kvs[0].value), kvs[0].mod_revision)


async def store(client: etcd.EtcdClient, prefix: str, tokens: Tokens) -> bool:
    """Write ``tokens`` if the record is still at ``tokens.revision``; False if it moved."""
    key = record_key(prefix)
    ok, _, _ = await client.txn([etcd.cmp_mod(key, tokens.revision)],
                                [etcd.op_put(key, json.dumps(tokens.to_json()).encode())])
    return bool(ok)


async def ensure(client: etcd.EtcdClient, prefix: str, ring: sealed.Keyring) -> Tokens:
    """The stored tokens, made first if there are none (init, idempotent on a re-run)."""
    while True:
        found = await load(client, prefix)
        if found is not None:
            return found
        await store(client, prefix, generate(ring))


async def rotate(client: etcd.EtcdClient, prefix: str, ring: sealed.Keyring,
                 role: str) -> Tokens:
    while True:
        found = await load(client, prefix)
        if found is None:
            raise ValueError("this cluster has no join tokens yet: was it made with `swctl "
                             "init`?")
        fresh = rotated(found, ring, role)
        if await store(client, prefix, fresh):
            return fresh
