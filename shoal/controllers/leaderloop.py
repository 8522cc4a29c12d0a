"""Leader-scoped loops: controllers whose work is not "reconcile this one object".

The runtime's contract is ``reconcile(ctx, key)``. Two built-in controllers do not fit it:
the scheduler places *batches* of pending tasks against a view of the whole cluster, and
the nodes controller follows heartbeat keys, which are not resources at all. Each needs
one long-running loop per leadership term, fed by its own informer handlers or watches,
writing through the fenced store, and stopped the moment leadership is lost.

``LeaderLoop`` gives them exactly that on top of the unchanged contract: the first
reconcile of a term *hosts* the loop — it does not return while leading — and every
other reconcile (the controller must run at least two workers) returns at once. When
the elector cancels the workers the loop is cancelled with them, so its lifetime is the
leadership's; if it ever fails, the key is retried with backoff and the next reconcile
hosts a fresh loop. The loop itself must be self-sufficient (register its own handlers):
the hosting key is never reconciled while the loop runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from shoal.runtime import gcpolicy, reconcile
from shoal.runtime import logging as rt_logging

log = rt_logging.get_logger("shoal.controllers.leaderloop")

Body = Callable[[reconcile.Context], Awaitable[None]]

#: How soon a loop that returned (it should not) is hosted again.
RESTART_AFTER = 1.0


class LeaderLoop:
    """Runs ``body(ctx)`` once per leadership term, hosted by the first reconcile call."""

    def __init__(self, name: str, body: Body) -> None:
        self.name = name
        self._body = body
        self._host: asyncio.Task[object] | None = None

    @property
    def running(self) -> bool:
        return self._host is not None and not self._host.done()

    async def reconcile(self, ctx: reconcile.Context, key: str) -> reconcile.Result | None:
        if self.running:
            return None  # the loop covers this key's changes through its own handlers
        gcpolicy.install()
        me = asyncio.current_task()
        self._host = me
        # The worker bound controller/key to every log line; the loop's lines are about
        # many objects and name the one they concern themselves.
        structlog.contextvars.unbind_contextvars("key")
        log.info("loop starting", controller=self.name, key=self.name)
        try:
            await self._body(ctx)
        finally:
            if self._host is me:
                self._host = None
            log.info("loop stopped", controller=self.name, key=self.name)
        return reconcile.Result(requeue_after=RESTART_AFTER)
