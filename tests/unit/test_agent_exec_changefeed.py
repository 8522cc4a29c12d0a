"""The drivers' change feed (``shoal/agent/exec/changefeed.py``): every subscriber sees
every uid published while it listens, the source is started when someone listens, and a
subscriber that stops listening is forgotten."""

from __future__ import annotations

import asyncio

from shoal.agent.exec import changefeed


async def test_every_listener_gets_each_uid_and_leaving_forgets_it() -> None:
    feed = changefeed.ChangeFeed()
    starts: list[int] = []
    first = feed.follow(lambda: starts.append(1))
    second = feed.follow(lambda: starts.append(2))
    got_first = asyncio.ensure_future(first.__anext__())
    got_second = asyncio.ensure_future(second.__anext__())
    await asyncio.sleep(0)  # both generators subscribe on their first step
    assert starts == [1, 2]
    feed.publish("uid-a")
    assert await got_first == "uid-a" and await got_second == "uid-a"

    await first.aclose()
    feed.publish("uid-b")
    assert await second.__anext__() == "uid-b"
    await second.aclose()
    feed.publish("uid-c")  # nobody listens: nothing queued anywhere
    assert not feed._queues
