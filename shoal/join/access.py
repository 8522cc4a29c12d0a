"""A node's etcd identity: the user its certificate names, and what that user may touch.

What it owns: creating the etcd user ``shoal:node:<name>`` (the CN of the node's
certificate: with client-certificate auth etcd takes the user from the CN) and its role
when a node joins, and deleting both when it is removed -- which is what makes a removed
node's certificate stop working at once, long before it expires: etcd refuses a
certificate whose CN names no user.

The role's key ranges are the least-privilege layout's business (``shoal.store.rbac``,
the layout branch); until it lands a node's role may read and write the cluster's
prefix, which is what every agent could do before TLS.
"""

from __future__ import annotations

import structlog

from shoal.pki.certs import node_user
from shoal.store import etcd

log = structlog.get_logger("shoal.join.access")


async def grant_node(client: etcd.EtcdClient, prefix: str, name: str) -> None:
    """The user and role of node ``name``; idempotent (a retried join, a re-join).
    Existence is looked up, not inferred from an error: etcd answers "already exists"
    with a status that means other things too."""
    user = node_user(name)
    start = f"/{prefix.strip('/')}/".encode()
    if user not in await client.role_list():
        await client.role_add(user)
    await client.role_grant(user, start, etcd.prefix_end(start), read=True, write=True)
    if user not in await client.user_list():
        await client.user_add(user)
    await client.user_grant_role(user, user)
    log.info("node user granted", node=name, user=user)


async def revoke_node(client: etcd.EtcdClient, name: str) -> None:
    """Delete the user and role of ``name``: its certificate is refused from now on.
    Nothing to do where there are none (``swctl up`` clusters have no node users)."""
    user = node_user(name)
    if user in await client.user_list():
        await client.user_delete(user)
    if user in await client.role_list():
        await client.role_delete(user)
    log.info("node user deleted", node=name, user=user)
