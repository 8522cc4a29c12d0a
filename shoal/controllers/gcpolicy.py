"""Garbage collection for a process holding big caches, and a watch on event-loop stalls.

A controller-manager caches every task of the cluster (100,000 tasks are about a million
containers the collector tracks). CPython runs a *full* collection each time the
long-lived heap has grown by a quarter; while caches fill — and every status write
replaces a cached task with a fresh object — that rule fires about once a second, and
each pass walks every cached object (1-2 s at 100,000 tasks on a busy machine,
measured up to 7 s). The event loop stalls meanwhile: leader-lease keepalives are late,
the lease expires, the controller loses leadership and rebuilds its state, which costs
more time again.

What lives long in these processes holds no reference cycles (plain dicts and
dataclasses, freed by reference counting the moment they are replaced), so:

* young collections stay automatic, with generations small enough that a pass is short;
* automatic full collections are off; instead every ``COLLECT_EVERY`` seconds a full
  collection runs and then ``gc.freeze()`` moves the survivors out of the collector's
  sight. Each collection therefore only walks what was created since the previous one,
  which in a steady cluster is little. The price: cyclic garbage that forms among
  objects older than that is never found — rare enough here (measured: tens of objects
  per minute), and the controllers break the cycles of their own per-term state
  explicitly when a term ends.

``install`` is idempotent per process (and event loop); the built-in controllers call it
when they start leading, so however the process was started (``swctl
controller-manager``, a test, a benchmark) it gets the policy. It also starts a watchdog
that logs any stall of the event loop longer than ``STALL_WARNING`` seconds — the
symptom to look for when leadership flaps.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any, Final

from shoal.runtime import logging as rt_logging

log = rt_logging.get_logger("shoal.controllers.gcpolicy")

#: Young collections every 5,000 net allocations, the middle one every 10 of those: each
#: object is scanned about twice either way, and small generations keep pauses short
#: (a middle collection walks at most ~50,000 objects).
THRESHOLDS: Final = (5_000, 10)
#: Seconds between collections of what was created since the previous one.
COLLECT_EVERY: Final = 10.0
#: Event-loop stalls longer than this are logged (a third of the default leader TTL).
STALL_WARNING: Final = 1.0
WATCHDOG_INTERVAL: Final = 0.1

_loop: asyncio.AbstractEventLoop | None = None
_tasks: list[asyncio.Task[None]] = []
_pause_started = 0.0


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    global _pause_started
    if phase == "start":
        _pause_started = time.perf_counter()
        return
    pause = time.perf_counter() - _pause_started
    if pause > 0.2:
        log.warning("long garbage-collector pause", key="process",
                    generation=info.get("generation"), seconds=round(pause, 3))


async def _collections() -> None:
    while True:
        await asyncio.sleep(COLLECT_EVERY)
        started = time.perf_counter()
        found = gc.collect()
        gc.freeze()
        seconds = time.perf_counter() - started
        (log.info if seconds > 0.2 else log.debug)(
            "garbage collected", key="process", unreachable=found,
            seconds=round(seconds, 3), frozen=gc.get_freeze_count())


async def _watchdog() -> None:
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(WATCHDOG_INTERVAL)
        stalled = loop.time() - before - WATCHDOG_INTERVAL
        if stalled > STALL_WARNING:
            log.warning("event loop stalled; leader leases at risk", key="process",
                        seconds=round(stalled, 3))


def install() -> None:
    """Timed full collections and the stall watchdog, once per process and event loop."""
    global _loop
    loop = asyncio.get_running_loop()
    if _loop is loop:
        return
    _loop = loop
    for task in _tasks:
        task.cancel()
    _tasks.clear()
    gc.set_threshold(THRESHOLDS[0], THRESHOLDS[1], 2**31 - 1)
    gc.freeze()  # the caches synced so far: long-lived, acyclic
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)
    _tasks.append(asyncio.create_task(_collections(), name="gcpolicy:collect"))
    _tasks.append(asyncio.create_task(_watchdog(), name="gcpolicy:watchdog"))
    log.info("garbage collection on a timer", key="process", every=COLLECT_EVERY,
             thresholds=THRESHOLDS)
