"""What every benchmark shares: a flushed line, the machine's load average (the machine
is shared with other sessions, so every recorded figure says how busy it was), and
writing many objects straight into etcd."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Sequence

from shoal.store import client

#: Objects per transaction (etcd's --max-txn-ops is raised for Shoal's batches, and each
#: object carries its projections) and transactions in flight when a bench fills etcd.
BATCH = 127
IN_FLIGHT = 16


def say(text: str) -> None:
    print(text, flush=True)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them."""
    return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])


async def commit_all(store: client.Store, ops: Sequence[client.Op]) -> None:
    """Commit ``ops`` in transactions of ``BATCH``, ``IN_FLIGHT`` at a time: how a bench
    writes a cluster's worth of objects without controllers."""
    sem = asyncio.Semaphore(IN_FLIGHT)

    async def commit(batch: Sequence[client.Op]) -> None:
        async with sem:
            await store.commit(batch)
    await asyncio.gather(*(commit(ops[i:i + BATCH]) for i in range(0, len(ops), BATCH)))
