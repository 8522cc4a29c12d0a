"""The elected-runnable contract: long-running work that is not "reconcile this object".

Some work does not fit ``reconcile(ctx, key)``: placing *batches* of tasks against a view
of the whole cluster, following heartbeat keys that are not resources, handing out
addresses from one cluster-wide pool. Such work is a runnable (controller-runtime's
``LeaderElectionRunnable``)::

    async def run(ctx: RunContext) -> None

registered with the manager beside the controllers (a :class:`RunnableSpec`). The
runtime promises:

* **Elected.** It runs only while this process holds the lease named after it
  (``<prefix>/leases/controllers/<name>``, the key space of controllers, so one name has
  one leader across the cluster). Other managers are hot standbys: they start it the
  moment that lease is released or expires.
* **Cancelled on loss.** It is cancelled as soon as leadership is in doubt, before
  anything else is awaited.
* **Fenced.** ``ctx.store`` carries the leadership's fence: once the lease is gone, etcd
  refuses its writes (:class:`~shoal.store.errors.FencedError`), so a paused ex-leader
  cannot write a stale decision.
* **Restarted.** It should run until cancelled. If it raises or returns, it is run again
  in the same term after a backoff (0.1 s doubling to 30 s; reset once a run lasted a
  minute), so one bad state cannot spin and a transient one heals.
* **Named in the logs.** Every line logged while it runs — by the runtime or the body,
  through any structlog logger — carries ``controller=<name>`` and ``key=<name>``; a line
  about one object names it with its own ``key=``.

Whatever it keeps between terms (caches fed by informer handlers) is its own business; the
runtime keeps nothing, so a new term must start from the informers and etcd.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, Final

from shoal.crds import kinds
from shoal.runtime import fenced, kindresolver
from shoal.runtime import informer as informer_mod
from shoal.runtime import logging as rt_logging
from shoal.store import client, errors

log = rt_logging.get_logger("shoal.runtime.runnable")

#: First pause before a failed (or returned) body runs again...
RESTART_DELAY: Final = 0.1
#: ...doubling up to this...
MAX_RESTART_DELAY: Final = 30.0
#: ...and back to the first once a run lasted this long (it was healthy meanwhile).
HEALTHY_AFTER: Final = 60.0

Body = Callable[["RunContext"], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class RunnableSpec:
    """A named long-running body, elected on its own lease unless ``leader_election`` is off."""

    name: str
    run: Body
    leader_election: bool = True


@dataclasses.dataclass
class RunContext:
    """What one run of a body gets. ``store`` writes are fenced while leading."""

    name: str
    store: client.Store
    fence: client.Fence | None
    informers: informer_mod.SharedInformerFactory
    resolver: kindresolver.KindResolver
    log: Any

    async def kind(self, name: str) -> kinds.KindInfo:
        """The kind answering to ``name``, waiting for its CRD if need be."""
        return await self.resolver.wait_for(name)


class Runner:
    """Runs one :class:`RunnableSpec` for a leadership term (or forever, unelected)."""

    def __init__(self, spec: RunnableSpec, store: client.Store,
                 informers: informer_mod.SharedInformerFactory,
                 resolver: kindresolver.KindResolver, *,
                 restart_delay: float = RESTART_DELAY,
                 max_restart_delay: float = MAX_RESTART_DELAY) -> None:
        self.spec = spec
        self.store = store
        self.informers = informers
        self.resolver = resolver
        self.restart_delay = restart_delay
        self.max_restart_delay = max_restart_delay
        self.runs = 0  # bodies started, for tests and logs

    async def run(self, fence: client.Fence | None = None) -> None:
        """Run the body until cancelled, restarting it with backoff; ``fence`` fences writes."""
        name = self.spec.name
        loop = asyncio.get_running_loop()
        delay = self.restart_delay
        with rt_logging.runnable_context(name):
            ctx = RunContext(name=name, store=fenced.fenced(self.store, fence), fence=fence,
                             informers=self.informers, resolver=self.resolver,
                             log=log.bind(controller=name, key=name))
            self.informers.start()
            while True:
                started = loop.time()
                self.runs += 1
                log.info("runnable started", runs=self.runs)
                outcome: BaseException | None = None
                try:
                    await self.spec.run(ctx)
                except asyncio.CancelledError:
                    log.info("runnable stopped")
                    raise
                except Exception as exc:
                    outcome = exc
                if loop.time() - started >= HEALTHY_AFTER:
                    delay = self.restart_delay
                if isinstance(outcome, errors.FencedError):
                    # Leadership is gone; the elector is about to cancel us.
                    log.warning("write refused: no longer leader", error=str(outcome),
                                retry_in=delay)
                elif outcome is not None:
                    log.error("runnable failed; restarting with backoff", retry_in=delay,
                              exc_info=outcome)
                else:
                    log.warning("runnable returned; restarting with backoff", retry_in=delay)
                outcome = None  # (an exception holds frames: no cycle kept while sleeping)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_restart_delay)
