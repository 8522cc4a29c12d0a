"""Garbage collection for a process holding big caches, and a watch on event-loop stalls.

A controller-manager caches every task of the cluster, an agent every task of its nodes
(100,000 tasks are about a million containers the collector tracks), and every watched
event replaces a cached object with a fresh one. Left to CPython, the collector walked
those objects again and again: young collections scan each new object, the middle
generation scans the survivors again, and a full collection runs each time the
long-lived heap has grown by a quarter — about once a second while caches fill, each
pass walking every cached object (1-2 s at 100,000 tasks, measured up to 7 s). Measured
in the 100,000-task benchmark: 3.4 of the controller-manager's 15 CPU seconds, and event
loop stalls long enough to lose leader leases.

What lives long in these processes holds no reference cycles (plain dicts, dataclasses
and tuples, freed by reference counting the moment they are replaced), so:

* automatic collection is off;
* every ``COLLECT_EVERY`` seconds a full collection runs and then ``gc.freeze()`` moves
  the survivors out of the collector's sight, so each collection only walks what was
  created since the previous one — each long-lived object is walked about once. The
  price: cyclic garbage lives until the next collection (measured: tens of objects per
  collection), and cycles among objects older than that are never found; the
  controllers break the cycles of their own per-term state explicitly when a term ends.

``install`` is idempotent per process (and event loop); the built-in controllers call it
when they start leading and the agent when it starts, so however the process was started
(``swctl controller-manager``, ``swctl agent``, a test, a benchmark) it gets the policy.
With ``watchdog`` it also logs any stall of the event loop longer than
``STALL_WARNING`` seconds — the symptom to look for when leadership flaps.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any, Final

from shoal.runtime import logging as rt_logging

log = rt_logging.get_logger("shoal.runtime.gcpolicy")

#: Seconds between collections of what was created since the previous one.
COLLECT_EVERY: Final = 10.0
#: Event-loop stalls longer than this are logged (a third of the default leader TTL).
STALL_WARNING: Final = 1.0
WATCHDOG_INTERVAL: Final = 0.1

_loop: asyncio.AbstractEventLoop | None = None
_tasks: list[asyncio.Task[None]] = []
_pause_started = 0.0
_paused_total = [0.0, 0.0, 0.0]  # seconds spent collecting, per generation


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    global _pause_started
    if phase == "start":
        _pause_started = time.perf_counter()
        return
    pause = time.perf_counter() - _pause_started
    generation = info.get("generation")
    if isinstance(generation, int) and 0 <= generation < 3:
        _paused_total[generation] += pause
    if pause > 0.2:
        log.warning("long garbage-collector pause", key="process",
                    generation=info.get("generation"), seconds=round(pause, 3))


async def _collections() -> None:
    try:
        while True:
            await asyncio.sleep(COLLECT_EVERY)
            started = time.perf_counter()
            found = gc.collect()
            gc.freeze()
            seconds = time.perf_counter() - started
            (log.info if seconds > 0.2 else log.debug)(
                "garbage collected", key="process", unreachable=found,
                seconds=round(seconds, 3), frozen=gc.get_freeze_count(),
                total_seconds=round(sum(_paused_total), 2))
    finally:
        # The loop is going away (a test, an embedded controller): nobody collects on a
        # timer any more, so CPython must again.
        gc.enable()


async def _watchdog() -> None:
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(WATCHDOG_INTERVAL)
        stalled = loop.time() - before - WATCHDOG_INTERVAL
        if stalled > STALL_WARNING:
            log.warning("event loop stalled; leader leases at risk", key="process",
                        seconds=round(stalled, 3))


def install(watchdog: bool = True) -> None:
    """Timed full collections (and the stall watchdog), once per process and event loop."""
    global _loop
    loop = asyncio.get_running_loop()
    if _loop is loop:
        return
    _loop = loop
    for task in _tasks:
        task.cancel()
    _tasks.clear()
    gc.disable()
    gc.freeze()  # the caches synced so far: long-lived, acyclic
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)
    _tasks.append(asyncio.create_task(_collections(), name="gcpolicy:collect"))
    if watchdog:
        _tasks.append(asyncio.create_task(_watchdog(), name="gcpolicy:watchdog"))
    log.info("garbage collection on a timer", key="process", every=COLLECT_EVERY)
