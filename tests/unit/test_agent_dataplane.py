"""Dataplane.sync's sharing of passes between hooks: who waits for what; drift logs.

The passes themselves (overlay, balancer, DNS) are replaced by a timed stand-in that
records them; what is tested is the scheduling in ``sync``, which is pure logic.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest
import structlog

from shoal.agent.dataplane import Dataplane
from shoal.net.lb import VirtualService
from shoal.net.overlay import OverlayNetwork
from shoal.store import client

PASS = 0.05  # seconds a stand-in pass takes


class Recorder:
    """Stands in for ``Dataplane._pass``: takes PASS seconds, plans with the tickets
    handed out when it starts (as the real one does), and can be told to fail."""

    def __init__(self, dp: Dataplane) -> None:
        self.dp = dp
        self.passes: list[str] = []
        self.fail_next = False

    async def __call__(self, reason: str, covering: int | None) -> Any:
        dp = self.dp
        if covering is not None and dp._covered(covering):
            return None
        asked = dp._asked
        self.passes.append(reason)
        await asyncio.sleep(PASS)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("netlink busy")
        dp._ready = True
        dp._applied = max(dp._applied, asked)
        return None


def dataplane() -> tuple[Dataplane, Recorder]:
    # A store that is never connected: the hooks under test never read etcd.
    store = client.Store(None, "/t")  # type: ignore[arg-type]
    dp = Dataplane(store, "n1", "10.0.0.1", observe=None)  # type: ignore[arg-type]
    rec = Recorder(dp)
    dp._pass = rec  # type: ignore[method-assign]
    return dp, rec


async def test_a_hook_covered_by_the_running_pass_does_not_wait_for_the_next_one() -> None:
    dp, rec = dataplane()
    first, second = dp._ask(), dp._ask()
    done: list[str] = []

    async def hook(name: str, ticket: int) -> None:
        await dp.sync("attach", covering=ticket)
        done.append(name)

    async def loop_pass() -> None:
        await dp.sync("change")
        done.append("loop")

    running = asyncio.create_task(hook("first", first))  # plans with both tickets
    await asyncio.sleep(0)
    queued = asyncio.create_task(loop_pass())  # waits for the lock
    await asyncio.sleep(0)
    await asyncio.gather(running, queued, hook("second", second))
    # "second" returned with the pass that covered it, not after the loop's pass.
    assert done == ["first", "second", "loop"]
    assert rec.passes == ["attach", "change"]


async def test_a_hook_runs_its_own_pass_when_the_running_one_began_before_its_change(
) -> None:
    dp, rec = dataplane()
    running = asyncio.create_task(dp.sync("change"))
    await asyncio.sleep(0)
    ticket = dp._ask()  # the change came after that pass planned
    await dp.sync("attach", covering=ticket)
    await running
    assert rec.passes == ["change", "attach"]
    assert dp._covered(ticket)


async def test_a_failed_pass_leaves_no_hook_waiting() -> None:
    dp, rec = dataplane()
    rec.fail_next = True
    ticket_a, ticket_b = dp._ask(), dp._ask()
    failing = asyncio.create_task(dp.sync("attach", covering=ticket_a))
    await asyncio.sleep(0)
    async with asyncio.timeout(2):
        await dp.sync("attach", covering=ticket_b)  # runs a pass of its own
    with pytest.raises(RuntimeError, match="netlink busy"):
        await failing
    assert rec.passes == ["attach", "attach"]


def test_drift_is_logged_with_the_keys_of_what_was_repaired() -> None:
    with structlog.testing.capture_logs() as logs:
        dp, _ = dataplane()
        svc = VirtualService.make("10.254.0.14", 0, "tcp", ["10.0.1.32:0"])
        dp.index.svc_claims[("default", "web")] = {svc.key: svc}
        net = OverlayNetwork("appnet", 4097, ipaddress.IPv4Network("10.0.1.0/24"),
                             ipaddress.IPv4Address("10.0.1.2"))
        dp._log_drift("balancer", ["re-added backend 10.0.1.32 of 10.254.0.14:0/tcp"],
                      (net,))
        dp._log_drift("overlay", ["fdb add 02:5c:0a:00:01:20 dst 198.18.0.2 on vni 4097"],
                      (net,))
    drift = [e for e in logs if e["event"] == "dataplane drift repaired"]
    assert [(e["part"], e["keys"]) for e in drift] == [
        ("balancer", ["service/default/web"]), ("overlay", ["network/appnet"])]
    assert drift[0]["repaired"] == ["re-added backend 10.0.1.32 of 10.254.0.14:0/tcp"]
