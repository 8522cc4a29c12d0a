"""Manager membership against etcd: who the members are, who answers, removing one.

What it owns: the calls behind MANAGER STATUS, ``node demote`` and ``leave`` -- the
member list, each member's own status (asked of that member alone, concurrently, with a
short deadline so one dead machine costs a second, not a hang) and ``member_remove`` --
with the decisions themselves in ``managers`` (pure).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import structlog

from shoal.join import managers
from shoal.store import errors, etcd

log = structlog.get_logger("shoal.join.membership")

STATUS_TIMEOUT: Final = 1.5
#: Seconds to wait out etcd's strict reconfiguration check: it admits or removes a member
#: only once every member has been connected for 5 s ("unhealthy cluster" before that),
#: so a promote or join right before goes through once the newcomer has settled.
RECONFIG_PATIENCE: Final = 20.0

T = TypeVar("T")


async def through_reconfig_check(call: Callable[[], Awaitable[T]],
                                 patience: float = RECONFIG_PATIENCE) -> T:
    """``call()`` (a member add or remove), again every 0.5 s while etcd refuses it as
    "unhealthy cluster", for up to ``patience`` seconds; other errors at once."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return await call()
        except errors.UnavailableError as exc:
            if "unhealthy cluster" not in str(exc) or time.monotonic() > deadline:
                raise
            log.info("etcd refuses a membership change until its members settle; waiting",
                     error=str(exc))
            await asyncio.sleep(0.5)


async def _status(client: etcd.EtcdClient, member: etcd.Member,
                  ) -> managers.MemberHealth | None:
    for url in member.client_urls:
        try:
            st = await client.status(url, timeout=STATUS_TIMEOUT)
        except errors.UnavailableError:
            continue
        return managers.MemberHealth(st.member_id, st.leader_id)
    return None


async def health(client: etcd.EtcdClient,
                 ) -> tuple[list[managers.Member], dict[int, managers.MemberHealth | None]]:
    """Every member and what it says of itself (None: it did not answer)."""
    raw = await client.member_list()
    answers = await asyncio.gather(*(_status(client, m) for m in raw))
    members = [managers.Member(m.id, m.name, m.peer_urls, m.client_urls) for m in raw]
    return members, {m.id: a for m, a in zip(members, answers, strict=True)}


async def manager_status(client: etcd.EtcdClient) -> dict[str, str]:
    """MANAGER STATUS by node name (members are named after their nodes)."""
    members, answers = await health(client)
    return managers.manager_status(members, answers)


async def remove_manager(client: etcd.EtcdClient, name: str,
                         verb: str = "demoting") -> bool:
    """Remove node ``name``'s etcd member if quorum allows (QuorumError otherwise);
    False when ``name`` is no member (nothing to do)."""
    members, answers = await health(client)
    target = managers.check_removal(members, answers, name, verb)
    if target is None:
        return False
    try:
        await through_reconfig_check(lambda: client.member_remove(target.id))
    except errors.UnavailableError:
        # Ambiguous: the member being removed may have served the request itself and
        # stopped before it answered ("raft: stopped"). Whether it is gone is the truth.
        if not await _removed(client, target.id):
            raise
    log.info("etcd member removed", node=name, member=f"{target.id:x}")
    return True


async def _removed(client: etcd.EtcdClient, member_id: int, patience: float = 5.0) -> bool:
    """Whether ``member_id`` is no longer in the member list, asking the remaining
    members (the removed one answers nothing) until ``patience`` runs out."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return member_id not in {m.id for m in await client.member_list()}
        except errors.UnavailableError:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
