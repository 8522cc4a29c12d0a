"""etcd roles: which key ranges each identity may read and write.

A worker node's etcd user (``shoal:node:<node>``, the CN of its client certificate) gets
one role of the same name, granting exactly what its agent needs (docs/security.md):

* read ``<p>/nodes/<node>/``: its tasks (projections), secrets and configs;
* read ``<p>/dataplane/``: the reduced Services and Tasks its dataplane programs
  (no templates, environments or secret references);
* read ``<p>/registry/networks/`` and ``<p>/registry/nodes/``: overlay allocation and
  the nodes' underlay addresses;
* read and write ``<p>/reports/<node>/`` (its tasks' status, and its Node's status at
  ``<p>/reports/<node>/status``) and ``<p>/heartbeats/<node>`` (its liveness key, on
  its own lease).

Nothing else: no spec of any kind, no other node's keys, no Secret or Config objects,
no join tokens, no leader locks. Managers, the controller-manager and ``swctl`` use
etcd's ``root`` (etcd requires it for the member and auth APIs); hollow agents serving
many nodes run with full rights too.

The role is data (:func:`roles_for_node`, pure, unit-tested); :func:`apply_role` (and
:func:`apply_roles` for several nodes) and :func:`remove_node` put it into etcd
through the auth calls of ``EtcdClient``, described here as :class:`AuthAPI` so this
module needs nothing but those calls. All are idempotent: init, join and a re-join may
run them again.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from shoal.pki import certs
from shoal.store import etcd, projections

USER_PREFIX = certs.NODE_USER_PREFIX  # one spelling: the CN the CA issues
ROOT = "root"


@dataclasses.dataclass(frozen=True)
class Grant:
    """Permission on the keys in ``[key, range_end)`` (``range_end`` empty: one key)."""

    key: bytes
    range_end: bytes
    read: bool
    write: bool

    def covers(self, key: bytes) -> bool:
        if not self.range_end:
            return key == self.key
        return self.key <= key < self.range_end


@dataclasses.dataclass(frozen=True)
class Role:
    """One etcd role and the user it is granted to."""

    name: str
    user: str
    grants: tuple[Grant, ...]

    def may_read(self, key: bytes) -> bool:
        return any(g.read and g.covers(key) for g in self.grants)

    def may_write(self, key: bytes) -> bool:
        return any(g.write and g.covers(key) for g in self.grants)


class AuthAPI(Protocol):
    """The auth calls of ``shoal.store.etcd.EtcdClient`` this module uses."""

    async def user_add(self, name: str) -> None: ...

    async def user_delete(self, name: str) -> None: ...

    async def role_add(self, name: str) -> None: ...

    async def role_delete(self, name: str) -> None: ...

    async def role_grant(self, role: str, key: bytes, range_end: bytes, read: bool,
                         write: bool) -> None: ...

    async def user_grant_role(self, user: str, role: str) -> None: ...

    async def user_list(self) -> list[str]: ...

    async def auth_status(self) -> bool: ...

    async def auth_enable(self) -> None: ...


async def enable_auth(auth: AuthAPI) -> None:
    """Turn etcd's auth on, with the ``root`` user (the admin certificate's CN) holding
    etcd's built-in root role, which etcd requires first. Idempotent: a re-run after a
    kill, or on a cluster already enabled, changes nothing."""
    if await auth.auth_status():
        return
    if certs.ROOT_USER not in await auth.user_list():
        await auth.user_add(certs.ROOT_USER)
    await auth.user_grant_role(certs.ROOT_USER, "root")
    await auth.auth_enable()


def user_name(node: str) -> str:
    """The etcd user (and client certificate CN) of a worker node."""
    return f"{USER_PREFIX}{node}"


def _prefix(key: bytes) -> tuple[bytes, bytes]:
    return key, etcd.prefix_end(key)


def _check_node(node: str) -> None:
    if projections.usable_node(node) is None:
        raise ValueError(f'node name "{node}" cannot name its keys in etcd: it must be '
                         "non-empty and hold no '/'")


def roles_for_node(prefix: str, node: str) -> Role:
    """The role of worker ``node`` in the cluster under ``prefix`` (see module docstring)."""
    _check_node(node)
    p = "/" + prefix.strip("/")
    mine = projections.node_prefix(p, node)
    grants = [
        Grant(*_prefix(mine), read=True, write=False),
        Grant(*_prefix(projections.node_reports_prefix(p, node)), read=True, write=True),
        Grant(f"{p}/heartbeats/{node}".encode(), b"", read=True, write=True),
        Grant(*_prefix(projections.dataplane_prefix(p)), read=True, write=False),
        Grant(*_prefix(f"{p}/registry/networks/".encode()), read=True, write=False),
        Grant(*_prefix(f"{p}/registry/nodes/".encode()), read=True, write=False),
    ]
    return Role(name=user_name(node), user=user_name(node), grants=tuple(grants))


def _exists(exc: Exception) -> bool:
    return "already exists" in str(exc).lower()


async def apply_role(auth: AuthAPI, role: Role) -> None:
    """Create (or complete) ``role`` and its user in etcd; safe to run again."""
    for add, name in ((auth.role_add, role.name), (auth.user_add, role.user)):
        try:
            await add(name)
        except Exception as exc:  # T's client says "already exists" in its own words
            if not _exists(exc):
                raise
    for g in role.grants:
        await auth.role_grant(role.name, g.key, g.range_end, g.read, g.write)
    await auth.user_grant_role(role.user, role.name)


async def apply_roles(auth: AuthAPI, prefix: str, nodes: list[str]) -> None:
    """``apply_role`` for each of ``nodes`` (what init and join call for the nodes they
    admit; managers' agents are nodes too)."""
    for node in nodes:
        await apply_role(auth, roles_for_node(prefix, node))


async def remove_node(auth: AuthAPI, node: str) -> None:
    """Delete the node's user and role: its certificate stops working at once."""
    for delete, name in ((auth.user_delete, user_name(node)),
                         (auth.role_delete, user_name(node))):
        try:
            await delete(name)
        except Exception as exc:
            if "not found" not in str(exc).lower():
                raise
