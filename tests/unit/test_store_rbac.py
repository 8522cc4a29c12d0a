"""A worker node's etcd role: what it grants and refuses, and applying it idempotently."""

from __future__ import annotations

import asyncio

import pytest

from shoal.store import rbac

ROLE = rbac.roles_for_node("/shoal", "n1")


@pytest.mark.parametrize("key", [
    "/shoal/nodes/n1/tasks/default/web.1", "/shoal/nodes/n1/secrets/default/db",
    "/shoal/nodes/n1/configs/default/site", "/shoal/dataplane/services/default/web",
    "/shoal/dataplane/tasks/default/web.1", "/shoal/registry/networks/front",
    "/shoal/registry/nodes/n2", "/shoal/heartbeats/n1"])
def test_a_worker_reads_what_its_tasks_and_dataplane_need(key: str) -> None:
    assert ROLE.may_read(key.encode())


@pytest.mark.parametrize("key", [
    "/shoal/nodes/n2/secrets/default/db", "/shoal/nodes/n10/tasks/default/web.1",
    "/shoal/registry/secrets/default/db", "/shoal/registry/configs/default/site",
    "/shoal/registry/tasks/default/web.1", "/shoal/registry/services/default/web",
    "/shoal/cluster/join-tokens", "/other/nodes/n1/tasks/default/web.1"])
def test_a_worker_cannot_read_other_nodes_or_the_registry_s_specs(key: str) -> None:
    assert not ROLE.may_read(key.encode())


@pytest.mark.parametrize("key", [
    "/shoal/reports/n1/default/web.1", "/shoal/reports/n1/status", "/shoal/heartbeats/n1"])
def test_a_worker_writes_its_reports_status_and_heartbeat(key: str) -> None:
    assert ROLE.may_write(key.encode())


@pytest.mark.parametrize("key", [
    "/shoal/registry/services/default/web", "/shoal/registry/tasks/default/web.1",
    "/shoal/registry/nodes/n1", "/shoal/nodes/n2/status", "/shoal/reports/n2/d/t",
    "/shoal/reports/n2/status", "/shoal/reports/n10/d/t",
    "/shoal/nodes/n1/tasks/default/web.1", "/shoal/nodes/n1/secrets/default/db",
    "/shoal/nodes/n1/statusx", "/shoal/heartbeats/n2", "/shoal/leases/controllers/x"])
def test_a_worker_writes_no_spec_and_nothing_of_another_node(key: str) -> None:
    assert not ROLE.may_write(key.encode())


def test_a_node_name_that_cannot_name_keys_is_refused() -> None:
    with pytest.raises(ValueError, match='node name "a/b" cannot name its keys'):
        rbac.roles_for_node("/shoal", "a/b")


class FakeAuth:
    """etcd's auth store in memory: enough to see what apply/remove call, twice."""

    def __init__(self) -> None:
        self.users: dict[str, set[str]] = {}
        self.roles: dict[str, set[tuple[bytes, bytes, bool, bool]]] = {}

    async def user_add(self, name: str) -> None:
        if name in self.users:
            raise RuntimeError(f"user {name} already exists")
        self.users[name] = set()

    async def user_delete(self, name: str) -> None:
        if self.users.pop(name, None) is None:
            raise RuntimeError(f"user {name} not found")

    async def role_add(self, name: str) -> None:
        if name in self.roles:
            raise RuntimeError(f"role {name} already exists")
        self.roles[name] = set()

    async def role_delete(self, name: str) -> None:
        if self.roles.pop(name, None) is None:
            raise RuntimeError(f"role {name} not found")

    async def role_grant(self, role: str, key: bytes, range_end: bytes, read: bool,
                         write: bool) -> None:
        self.roles[role].add((key, range_end, read, write))

    async def user_grant_role(self, user: str, role: str) -> None:
        self.users[user].add(role)


def test_applying_twice_and_removing_twice_is_safe() -> None:
    auth = FakeAuth()

    async def run() -> None:
        await rbac.apply_role(auth, ROLE)
        await rbac.apply_roles(auth, "/shoal", ["n1"])
        assert auth.users == {"shoal:node:n1": {"shoal:node:n1"}}
        assert len(auth.roles["shoal:node:n1"]) == len(ROLE.grants)
        await rbac.remove_node(auth, "n1")
        await rbac.remove_node(auth, "n1")
        assert auth.users == {} and auth.roles == {}

    asyncio.run(run())
