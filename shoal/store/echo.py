"""Objects this process is writing, kept briefly so its own watches need not decode them.

A controller-manager's informers see each of its controllers' writes come back through
the watch; for tasks that is two writes of the three in a task's life (created by the
orchestrator, assigned by the scheduler). Decoding those echoes was ~6 % of the
controller-manager's CPU in ``bench/schedule.py``. An event whose value is byte for
byte the value encoded from an object this process wrote can be served by that object
(with the event's revision), as long as nobody has changed the object since. Hence:

* writers opt in per write (``Store.commit(..., share=True)``), and only those that
  build a fresh object for every write and never touch it afterwards do (the
  scheduler's assignments, the orchestrator's task creations);
* an entry is put *before* the write is sent — the echo often arrives before the
  write's own answer — and is used only for an event under its key with exactly its
  bytes, once;
* nothing depends on an entry being there: any other event is decoded as before.
  Entries nobody claims (the write lost its compare, the watch restarted) are dropped
  after ``AGE`` to ``2 * AGE`` seconds: two generations, swapped when the older one has
  had its time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from shoal.crds import resource

#: Seconds an unclaimed entry is kept at least (and at most twice that).
AGE = 2.0


class EchoCache:
    """``put`` before a write; ``take`` when a watch event arrives."""

    def __init__(self, age: float = AGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.age = age
        self._clock = clock
        self._young: dict[bytes, tuple[bytes, resource.Resource]] = {}
        self._old: dict[bytes, tuple[bytes, resource.Resource]] = {}
        self._swapped = clock()
        self.used = 0  # echoes served from here instead of decoded

    def put(self, written: Iterable[tuple[bytes, bytes, resource.Resource]]) -> None:
        """(key, encoded value, object) of writes about to be sent."""
        now = self._clock()
        if now - self._swapped >= self.age:
            self._old, self._young = self._young, {}
            self._swapped = now
        young = self._young
        for key, value, obj in written:
            young[key] = (value, obj)

    def take(self, key: bytes, value: bytes, revision: int) -> resource.Resource | None:
        """The object whose encoding is ``value`` under ``key``, stamped with
        ``revision``, once; None for any other event."""
        for table in (self._young, self._old):
            entry = table.get(key)
            if entry is not None and entry[0] == value:
                del table[key]
                self.used += 1
                obj = entry[1]
                obj.metadata.resourceVersion = str(revision)
                return obj
        return None

    def __len__(self) -> int:
        return len(self._young) + len(self._old)
