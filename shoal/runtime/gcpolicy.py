"""Garbage collection for a process holding big caches, and a watch on event-loop stalls.

A controller-manager caches every task of the cluster, and so does an agent serving many
hollow nodes: 100,000 tasks are 400,000-700,000 objects the collector tracks, and
each status write replaces a cached task with a freshly decoded one. Left to CPython,
young collections run every few thousand allocations, and each survivor is walked again
in the middle generation and again in every full collection. Measured in
``bench/schedule.py`` (100,000 replicas), that was 3.9 of the controller-manager's 15
CPU-seconds and 1.5 of the agent's 12; with the policy below, 1.7 and 0.9.

What lives long in these processes holds no reference cycles (plain dicts and
dataclasses, freed by reference counting the moment they are replaced; a DEBUG_SAVEALL
run of the agent found no cyclic garbage), so:

* automatic collections are off;
* a collection runs every ``COLLECT_EVERY`` seconds, or sooner once ``YOUNG_LIMIT``
  tracked objects have piled up since the last one, and ``gc.freeze()`` then moves the
  survivors out of the collector's sight. Each pass walks only what was created since
  the previous one and is still alive — every long-lived object is walked about once,
  and a cached task replaced before the pass (its next status write) is never walked.
  That is why the period is 10 s rather than 5: in ``bench/schedule.py`` the
  controller-manager's passes took ~1.2 s in all instead of ~1.9 s, and placements/s
  were 1-10 % higher in all 8 runs paired with the 5 s policy (bench/RESULTS.md,
  fourth pass; a 500,000-object limit cut in too early and gained nothing). The pauses
  are longer (0.5-0.75 s there, against 0.25-0.5 s); the object limit caps them
  whatever the heap's growth — about a million objects, ~0.7-1.4 s on the benchmark
  machine, well inside a 3 s leader lease (the agent's heartbeat has its own process);
* every ``UNFREEZE_EVERY`` seconds the frozen objects are handed back first, so a cycle
  that formed among old objects (an asyncio task that lived long and ended in an
  exception) is found within minutes rather than kept for good.

Cyclic garbage therefore lives at most ``COLLECT_EVERY`` seconds, and a pass pauses the
event loop for the time it takes to walk the objects created meanwhile.

``install`` is idempotent per process and event loop; the built-in controllers call it
when they start leading and the agent when it starts, so however the process was started
(``swctl controller-manager``, a test, a benchmark) it gets the policy. When the event
loop ends (its tasks are cancelled) CPython's own collection is restored, so a test
process running many loops is left as it was found. ``watchdog=True`` also starts a
task that logs any stall of the event loop longer than ``STALL_WARNING`` seconds — the
symptom to look for when leadership flaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import time
from typing import Any, Final

from shoal.runtime import logging as rt_logging

log = rt_logging.get_logger("shoal.runtime.gcpolicy")

#: Most seconds between collections of what was created since the previous one.
COLLECT_EVERY: Final = 10.0
#: ... or sooner, once this many tracked objects were created (net of those freed) since.
YOUNG_LIMIT: Final = 1_000_000
#: How often the object count is looked at (``gc.get_count``: a field read).
CHECK_EVERY: Final = 0.5
#: Seconds between collections that look at old (frozen) objects too.
UNFREEZE_EVERY: Final = 300.0
#: Event-loop stalls longer than this are logged (a third of the default leader TTL).
STALL_WARNING: Final = 1.0
WATCHDOG_INTERVAL: Final = 0.1
#: A collection pause longer than this is logged.
LONG_PAUSE: Final = 0.2

_loop: asyncio.AbstractEventLoop | None = None
_tasks: list[asyncio.Task[None]] = []
_timer: asyncio.Task[None] | None = None  # the current collection timer
_pause_started = 0.0
_enabled_before: bool | None = None  # CPython's own setting, restored at the end


@dataclasses.dataclass
class _Pauses:
    """Collector pauses of this process since ``watch_pauses``."""

    seconds: float = 0.0
    full: int = 0
    longest: float = 0.0


_paused = _Pauses()


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    global _pause_started
    if phase == "start":
        _pause_started = time.perf_counter()
        return
    pause = time.perf_counter() - _pause_started
    _paused.seconds += pause
    if info.get("generation") == 2:
        _paused.full += 1
    _paused.longest = max(_paused.longest, pause)
    if pause > LONG_PAUSE:
        log.warning("long garbage-collector pause", key="process",
                    generation=info.get("generation"), seconds=round(pause, 3),
                    collected=info.get("collected"))


def watch_pauses() -> None:
    """Time every collection of this process (``pauses``) and log the long ones; once."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


def pauses() -> dict[str, float]:
    """Collector time so far: ``seconds`` in all, ``full`` passes, ``max_pause_s``."""
    return {"seconds": round(_paused.seconds, 2), "full": _paused.full,
            "max_pause_s": round(_paused.longest, 3)}


def collect(unfreeze: bool = False) -> int:
    """One pass: collect, then freeze the survivors. Returns the unreachable objects found."""
    if unfreeze:
        gc.unfreeze()
    found = gc.collect()
    gc.freeze()
    return found


async def _collections(every: float, unfreeze_every: float, young_limit: int) -> None:
    last_unfreeze = last = time.monotonic()
    check = min(CHECK_EVERY, every)
    while True:
        await asyncio.sleep(check)
        # gc.get_count()[0]: tracked objects allocated minus freed since the last
        # collection or freeze (it counts even while automatic collection is off).
        if time.monotonic() - last < every and gc.get_count()[0] < young_limit:
            continue
        last = time.monotonic()
        unfreeze = last - last_unfreeze >= unfreeze_every
        if unfreeze:
            last_unfreeze = last
        started = time.perf_counter()
        found = collect(unfreeze)
        seconds = time.perf_counter() - started
        # (No gc.get_freeze_count() here: it walks every frozen object to count them.)
        (log.info if seconds > LONG_PAUSE else log.debug)(
            "garbage collected", key="process", unreachable=found, unfrozen=unfreeze,
            seconds=round(seconds, 3))


def _restore(timer: asyncio.Task[None]) -> None:
    """The timer is gone (its event loop ended): CPython collects for whatever runs next,
    unless a later ``install`` (another event loop) has a timer running."""
    global _enabled_before
    if _timer is not None and _timer is not timer and not _timer.done():
        return
    gc.unfreeze()
    if _enabled_before:
        gc.enable()
    _enabled_before = None


async def _watchdog() -> None:
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(WATCHDOG_INTERVAL)
        stalled = loop.time() - before - WATCHDOG_INTERVAL
        if stalled > STALL_WARNING:
            log.warning("event loop stalled; leader leases at risk", key="process",
                        seconds=round(stalled, 3))


def install(every: float = COLLECT_EVERY, unfreeze_every: float = UNFREEZE_EVERY,
            watchdog: bool = True, young_limit: int = YOUNG_LIMIT) -> None:
    """Timed collections (and the stall watchdog), once per process and event loop."""
    global _loop, _enabled_before, _timer
    loop = asyncio.get_running_loop()
    if _loop is loop and any(not t.done() for t in _tasks):
        return
    _loop = loop
    for task in _tasks:
        with contextlib.suppress(RuntimeError):  # its loop may be closed already
            task.cancel()
    _tasks.clear()
    if _enabled_before is None:
        _enabled_before = gc.isenabled()
    gc.disable()
    gc.freeze()  # what the process has built so far (caches synced): long-lived
    watch_pauses()
    _timer = loop.create_task(_collections(every, unfreeze_every, young_limit),
                              name="gcpolicy:collect")
    # A done-callback runs even if the task is cancelled before it ever started.
    _timer.add_done_callback(_restore)
    _tasks.append(_timer)
    if watchdog:
        _tasks.append(loop.create_task(_watchdog(), name="gcpolicy:watchdog"))
    log.info("garbage collection on a timer", key="process", every=every,
             unfreeze_every=unfreeze_every, young_limit=young_limit)
