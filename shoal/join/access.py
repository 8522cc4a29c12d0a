"""A node's etcd identity: the user its certificate names, and what that user may touch.

What it owns: creating the etcd user ``shoal:node:<name>`` (the CN of the node's
certificate: with client-certificate auth etcd takes the user from the CN) and its role
when a node joins, and deleting both when it is removed -- which is what makes a removed
node's certificate stop working at once, long before it expires: etcd refuses a
certificate whose CN names no user.

The role's key ranges are the least-privilege layout's (``shoal.store.rbac``,
docs/security.md): a node reads its own task copies, the dataplane's projections, the
networks and nodes, and writes only its own reports and heartbeat.
"""

from __future__ import annotations

import structlog

from shoal.store import etcd, rbac

log = structlog.get_logger("shoal.join.access")


async def grant_node(client: etcd.EtcdClient, prefix: str, name: str) -> None:
    """The user and role of node ``name``; idempotent (a retried join, a re-join)."""
    await rbac.apply_role(client, rbac.roles_for_node(prefix, name))
    log.info("node user granted", node=name, user=rbac.user_name(name))


async def revoke_node(client: etcd.EtcdClient, name: str) -> None:
    """Delete the user and role of ``name``: its certificate is refused from now on.
    Nothing to do where there are none (``swctl up`` clusters have no node users)."""
    await rbac.remove_node(client, name)
    log.info("node user deleted", node=name, user=rbac.user_name(name))
