"""The timed garbage-collection policy: cycles are still collected, old ones too, and the
process gets CPython's own collection back when the event loop ends."""

from __future__ import annotations

import asyncio
import gc
import weakref

from shoal.runtime import gcpolicy


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> tuple[weakref.ref[_Node], asyncio.Event]:
    """Two objects referring to each other, already unreachable; the event is set when
    they are freed."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    freed = asyncio.Event()
    weakref.finalize(a, freed.set)
    return weakref.ref(a), freed


async def _freed(freed: asyncio.Event, timeout: float) -> bool:
    await asyncio.wait_for(freed.wait(), timeout)
    return True


def test_young_cycles_are_collected_on_the_timer_and_collection_is_restored() -> None:
    async def scenario() -> None:
        gcpolicy.install(every=0.05, watchdog=False)
        assert not gc.isenabled()  # no collections driven by allocation counts
        passes = gcpolicy.pauses()["full"]
        young, freed = _cycle()
        assert young() is not None  # only the collector frees a cycle
        assert await _freed(freed, timeout=5.0)
        assert gcpolicy.pauses()["full"] > passes  # the timed pass was timed too

    # (Other tests' controllers may have installed the policy in pytest's own loop.)
    asyncio.run(scenario())
    assert gc.isenabled()  # the loop ended: CPython collects again
    assert gc.get_freeze_count() == 0


def test_cycles_among_frozen_objects_are_found_by_the_unfreezing_pass() -> None:
    async def scenario() -> None:
        gcpolicy.install(every=0.05, unfreeze_every=2.0, watchdog=False)
        old, freed = _cycle()
        gc.freeze()  # as a pass does with what survives it: out of the collector's sight
        assert gc.get_freeze_count() > 0
        await asyncio.sleep(0.2)  # young passes ran meanwhile (none unfreezes yet)
        assert old() is not None
        assert await _freed(freed, timeout=5.0)

    asyncio.run(scenario())
    assert gc.isenabled()


def test_install_is_idempotent_per_event_loop() -> None:
    async def scenario() -> int:
        gcpolicy.install(every=0.05, watchdog=False)
        first = [t for t in asyncio.all_tasks() if t.get_name() == "gcpolicy:collect"]
        gcpolicy.install(every=0.05, watchdog=False)
        second = [t for t in asyncio.all_tasks() if t.get_name() == "gcpolicy:collect"]
        assert first == second
        return len(second)

    assert asyncio.run(scenario()) == 1


def test_a_pile_of_new_objects_brings_the_pass_forward() -> None:
    async def scenario() -> None:
        # A period no test waits for: only the object count can trigger this pass.
        gcpolicy.install(every=3600.0, young_limit=20_000, watchdog=False)
        passes = gcpolicy.pauses()["full"]
        young, freed = _cycle()
        await asyncio.sleep(gcpolicy.CHECK_EVERY * 2)
        assert young() is not None, "few objects, long period: no pass yet"
        pile = [[i] for i in range(30_000)]  # tracked objects, alive
        assert await _freed(freed, timeout=5.0)
        assert gcpolicy.pauses()["full"] > passes
        del pile

    asyncio.run(scenario())
    assert gc.isenabled()
