"""shoal.agent.taskqueue: de-duplication, one worker per key, re-run of a key added meanwhile."""

from __future__ import annotations

import asyncio

from shoal.agent.taskqueue import TaskQueue


async def test_a_key_is_queued_once_and_rerun_when_added_during_its_reconcile() -> None:
    seen: list[str] = []
    release = asyncio.Event()

    async def handle(key: str) -> None:
        seen.append(key)
        if len(seen) == 1:
            await release.wait()

    queue = TaskQueue(handle, concurrency=4)
    queue.add("a")
    queue.add("a")  # still queued: merged
    await asyncio.sleep(0.01)
    assert seen == ["a"]
    queue.add("a")  # in progress: processed once more afterwards
    queue.add("a")
    release.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert seen == ["a", "a"]
    await queue.close()


async def test_workers_are_spawned_on_demand_up_to_the_limit() -> None:
    running = 0
    peak = 0
    gate = asyncio.Event()

    async def handle(key: str) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    queue = TaskQueue(handle, concurrency=3)
    for key in "abcdef":
        queue.add(key)
    for _ in range(20):
        await asyncio.sleep(0)
    assert peak == 3
    gate.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert running == 0 and len(queue) == 0
    await queue.close()
