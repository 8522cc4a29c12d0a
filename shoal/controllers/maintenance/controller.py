"""The etcd-maintenance loop: notice etcd's NOSPACE alarm, recover, say so in Events.

Every controller-manager runs it, unelected (``leader_election=False``), and that is on
purpose: while etcd is out of space it refuses lease grants and puts, so no manager can
be *elected* then -- if the leader of an elected loop died during the outage, no one
could take over and etcd would stay read-only for good. The recovery
(``shoal.store.maintenance.recover_space``) is idempotent and skips work another caller
has just done, so several managers doing it is safe; to keep them from doing it at
once, each waits a random moment after first seeing the alarm and looks again.

It polls the alarm list (one small call every ``POLL`` seconds; etcd has no watch on
alarms). Events cannot be written while etcd refuses writes, so both are recorded once
writes are accepted again, by the manager whose recovery disarmed the alarm: an
``EtcdOutOfSpace`` Warning (when it started, the sizes then) and an
``EtcdSpaceRecovered`` Normal Event (what was done, the sizes now). When compaction
frees too little, the alarm stays and the loop logs what the user must do (an Event
would be refused) every ``STUCK_LOG_EVERY`` seconds, and tries again after
``RETRY_STUCK``: deleting objects frees space too. ``swctl etcd status`` shows the alarm
and the sizes at any time, and every refused ``swctl`` write says what to do.

The quota is not reported by etcd: it is ``$SHOAL_ETCD_QUOTA_BYTES`` or the one Shoal
starts etcd with (``etcd_server.QUOTA_BYTES``).
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Sequence
from typing import Final

from shoal.crds import resource
from shoal.runtime import events
from shoal.runtime import logging as rt_logging
from shoal.runtime.runnable import RunContext, RunnableSpec
from shoal.store import errors, maintenance

log = rt_logging.get_logger("shoal.controllers.maintenance")

NAME: Final = "etcd-maintenance"
#: Seconds between two looks at etcd's alarms.
POLL: Final = 2.0
#: Upper bound of the random wait after first seeing an alarm, before acting on it.
JITTER: Final = 1.5
#: Seconds before another recovery when the last one could not free enough.
RETRY_STUCK: Final = 10.0
STUCK_LOG_EVERY: Final = 60.0
#: How old the revision compacted to is, at least when the loop has seen one that old.
COMPACT_LAG: Final = 2.0


def due(first_seen: float, delay: float, last_try: float, stuck: bool, now: float,
        moved: bool = False) -> bool:
    """Whether to run a recovery now: the alarm has stood ``delay`` seconds since this
    manager first saw it, and, if the last recovery left it (``stuck``), either something
    was written or deleted since (``moved``: the revision to compact to is past the last
    try's -- someone deleted data, so there may be space to free) or ``RETRY_STUCK`` has
    passed."""
    if now - first_seen < delay:
        return False
    return not stuck or moved or now - last_try >= RETRY_STUCK


def compact_to(seen: Sequence[tuple[float, int]], now: float) -> int:
    """The revision to compact to: the newest one seen at least ``COMPACT_LAG`` seconds
    ago (else the oldest seen; 0, the current one, if none). A watcher a moment behind
    keeps its place instead of having to re-list everything."""
    old = [rev for at, rev in seen if now - at >= COMPACT_LAG]
    if old:
        return old[-1]
    return seen[0][1] if seen else 0


def _involved() -> resource.Resource:
    """What the Events are about: etcd itself, as a cluster-scoped name."""
    return resource.new("Etcd", "etcd")


class MaintenanceLoop:
    def __init__(self, quota: int | None = None) -> None:
        self.quota = quota
        self.spec = RunnableSpec(NAME, self.run, leader_election=False)

    async def run(self, ctx: RunContext) -> None:
        quota = self.quota or maintenance.quota_from_env()
        client = ctx.store.etcd
        first_seen = 0.0
        started_at = ""           # wall-clock time the alarm was first seen, for the Event
        out_of_space = ""         # what the alarm's first look found, for the Event
        delay = random.uniform(0, JITTER)
        last_try = 0.0
        stuck = False
        last_stuck_log = 0.0
        stuck_at = 0              # the revision the last try that freed too little compacted to
        # (when, revision) at each look while the alarm stands: what to compact to.
        seen_revisions: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)
        while True:
            now = time.monotonic()
            try:
                alarmed = await maintenance.no_space_alarms(client)
            except errors.UnavailableError as exc:
                log.debug("etcd alarms unavailable", key=NAME, error=str(exc))
                await asyncio.sleep(POLL)
                continue
            if not alarmed:
                first_seen, stuck = 0.0, False
                seen_revisions.clear()
                await asyncio.sleep(POLL)
                continue
            try:
                seen_revisions.append((now, await client.current_revision()))
            except errors.UnavailableError:
                pass
            if not first_seen:
                first_seen, started_at = now, resource.now_rfc3339()
                delay = random.uniform(0, JITTER)
                try:
                    spaces = await maintenance.spaces(client)
                except errors.UnavailableError:
                    spaces = []
                out_of_space = maintenance.out_of_space_message(spaces, quota)
                log.warning(out_of_space, key=NAME, members=alarmed)
            moved = stuck and compact_to(seen_revisions, now) > stuck_at
            if not due(first_seen, delay, last_try, stuck, now, moved):
                wait = POLL if stuck else first_seen + delay - now
                await asyncio.sleep(max(0.05, min(POLL, wait)))
                continue
            last_try = now
            try:
                # A retry defragments every member over the limit again only if something
                # was deleted since (the revision moved): otherwise it has nothing to free.
                revision = compact_to(seen_revisions, now) or \
                    await client.current_revision()
                rec = await maintenance.recover_space(
                    client, quota, first=not stuck or revision != stuck_at,
                    revision=revision)
            except errors.UnavailableError as exc:
                log.warning("etcd space recovery interrupted; trying again", key=NAME,
                            error=str(exc))
                await asyncio.sleep(POLL)
                continue
            if rec is None:  # another manager got there first
                first_seen, stuck = 0.0, False
                continue
            message = maintenance.outcome_message(rec)
            if not rec.disarmed:
                stuck, stuck_at = True, revision
                if now - last_stuck_log >= STUCK_LOG_EVERY:
                    last_stuck_log = now
                    log.error(message, key=NAME)
                await asyncio.sleep(POLL)
                continue
            log.info(message, key=NAME, revision=rec.compacted_to,
                     defragmented=list(rec.defragmented),
                     refused_for=round(time.monotonic() - first_seen, 1))
            await self._record(ctx, f"since {started_at}: {out_of_space}", message)
            first_seen, stuck = 0.0, False

    @staticmethod
    async def _record(ctx: RunContext, out_of_space: str, recovered: str) -> None:
        obj = _involved()
        for type_, reason, message in (
                (events.WARNING, "EtcdOutOfSpace", out_of_space),
                (events.NORMAL, "EtcdSpaceRecovered", recovered)):
            # The first writes after a disarm may still meet a member that has not
            # applied it: a few tries, then the log line above is all there is.
            for _ in range(5):
                try:
                    await events.record_event(ctx.store, obj, type_, reason, message,
                                              source=NAME)
                    break
                except errors.StoreError as exc:
                    log.info("could not record event", key=NAME, reason=reason,
                             error=str(exc))
                    await asyncio.sleep(1.0)


def controller_spec(quota: int | None = None) -> RunnableSpec:
    """A fresh loop for one controller-manager (``quota``: the members'
    ``--quota-backend-bytes``, else ``$SHOAL_ETCD_QUOTA_BYTES`` or Shoal's default)."""
    return MaintenanceLoop(quota).spec
