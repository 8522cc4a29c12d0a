"""Run several controllers and runnables in one process, each elected leader on its own.

This is the controller-manager: one etcd connection, one set of shared informers, and
per controller (``reconcile.ControllerSpec``) or runnable (``runnable.RunnableSpec``) a
leader election whose leadership runs that controller's workers or that runnable's body.
A controller whose kind is not registered yet waits for its CRD without holding up the
others. Zero of them is valid (the process just idles, e.g. in ``swctl up`` before any
built-in controllers exist).
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Sequence

from shoal.pki.bundle import Bundle
from shoal.runtime import (
    decorators,
    informer,
    kindresolver,
    leader,
    metrics,
    reconcile,
    runnable,
)
from shoal.runtime import logging as rt_logging
from shoal.store import client, errors

log = rt_logging.get_logger("shoal.runtime.manager")

#: What a manager runs: per-object controllers and elected runnables, one namespace of
#: names (and of leases) for both.
Spec = reconcile.ControllerSpec | runnable.RunnableSpec


def default_identity() -> str:
    """``host-pid-random``: unique per process, readable in the leader key."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


async def connect(etcd_url: str, prefix: str, max_delay: float = 5.0,
                  tls: Bundle | None = None) -> client.Store:
    """Connect to etcd, retrying until it answers (an operator may start before etcd)."""
    delay = 0.2
    while True:
        try:
            # A controller-manager watches what its controllers write: their bulk writes
            # (commit with share=True) reach its informers without being decoded again.
            return await client.Store.connect(etcd_url, prefix=prefix, echoes=True, tls=tls)
        except errors.UnavailableError as exc:
            log.warning("etcd not reachable yet; retrying", error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)


async def run_manager(etcd_url: str, prefix: str,
                      controllers: Sequence[Spec],
                      identity: str | None = None, metrics_port: int | None = None, *,
                      registry: decorators.OperatorRegistry | None = None,
                      lease_ttl: float = leader.DEFAULT_TTL,
                      tls: Bundle | None = None) -> None:
    """Run ``controllers`` (plus ``registry``'s decorated handlers) until cancelled;
    ``tls`` is the client certificate for an https etcd."""
    specs: list[Spec] = [*controllers,
                         *(registry.controller_specs() if registry is not None else [])]
    server = (metrics.start_metrics_server(metrics_port, tls=tls)
              if metrics_port is not None else None)
    if server is not None:
        log.info("serving metrics", port=server.port)
    store = await connect(etcd_url, prefix, tls=tls)
    try:
        await run_controllers(store, specs, identity or default_identity(), lease_ttl)
    finally:
        await store.close()
        if server is not None:
            server.close()


async def run_controllers(store: client.Store, specs: Sequence[Spec],
                          identity: str, lease_ttl: float = leader.DEFAULT_TTL) -> None:
    """Run ``specs`` on an open store until cancelled (the testable core of run_manager)."""
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"controller and runnable names must be unique; repeated: "
                         f"{', '.join(duplicates)}")
    factory = informer.SharedInformerFactory(store)
    resolver = kindresolver.KindResolver(factory)
    factory.start()
    log.info("controller manager starting", identity=identity, controllers=names,
             prefix=store.prefix)
    tasks = [asyncio.create_task(_run_one(store, factory, resolver, spec, identity, lease_ttl),
                                 name=f"controller:{spec.name}")
             for spec in specs]
    try:
        if tasks:
            await asyncio.gather(*tasks)
        else:
            await asyncio.Event().wait()  # nothing to run: idle until cancelled
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await factory.stop()


async def _run_one(store: client.Store, factory: informer.SharedInformerFactory,
                   resolver: kindresolver.KindResolver, spec: Spec,
                   identity: str, lease_ttl: float) -> None:
    if isinstance(spec, runnable.RunnableSpec):
        runner = runnable.Runner(spec, store, factory, resolver)
        if spec.leader_election:
            await leader.LeaderElector(store, spec.name, identity, lease_ttl).run(runner.run)
        else:
            await runner.run(None)  # restarts its body itself
        return
    info = await resolver.wait_for(spec.kind)
    watches = [reconcile.Watch(await resolver.wait_for(kind)) for kind in spec.owns]
    watches += [reconcile.Watch(await resolver.wait_for(kind), mapper)
                for kind, mapper in spec.watches]
    controller = reconcile.Controller(spec.name, store, factory, info, spec.reconcile,
                                      workers=spec.workers, watches=watches,
                                      namespace=spec.namespace)
    if not spec.leader_election:
        await _run_forever(controller)
        return
    elector = leader.LeaderElector(store, spec.name, identity, lease_ttl)
    await elector.run(controller.run)


async def _run_forever(controller: reconcile.Controller) -> None:
    """A controller without election: restart it if it ever crashes."""
    while True:
        try:
            await controller.run(None)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("controller crashed; restarting", controller=controller.name)
            await asyncio.sleep(1.0)
