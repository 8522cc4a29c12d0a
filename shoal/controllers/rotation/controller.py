"""The rotation controller: updating a Secret or Config rolls the services that mount it.

Swarm's secrets and configs are immutable; Shoal's may be updated (``swctl secret
update``, ``apply``), and every task must then get the new value without downtime. The
agent mounts whatever value a Secret holds when a task starts, so a new value needs new
tasks; the updater already knows how to replace tasks batch by batch without downtime
(``updateConfig``, start-first). This controller only tells it to: it owns the
``shoal.io/mounted-digests`` annotation of each Service (``crds.mountdigests``) and, when
a digest it recorded no longer matches the value's, bumps ``spec.forceUpdate`` with the
change cause ``secret db_pass updated`` -- as ``swctl service update --force`` would.
It does not mount anything (the agent does), roll anything (the updater does) or read
values (digests are enough: ``crds.secretdata.digest``).

One reconcile per Service (``decide`` is the pure rule). A Secret or Config changing
wakes the services of its namespace that mount it (from the shared Service cache). The
digests are read from etcd, not from a cache, so a reconcile never compares a digest it
recorded with an older value a lagging cache still holds (which would roll twice).

Crash safety: recording the new digests, bumping ``forceUpdate`` and setting the cause
are one compare-and-swap write of the Service over the version the decision was made
from. Killed before it, the next leader sees the same mismatch and rolls once; killed
after it, the digests are recorded and nothing rolls again; a write that lost a race is
decided again from the fresher service.
"""

from __future__ import annotations

from typing import Final

from shoal.controllers import common
from shoal.controllers.rotation import decide as rules
from shoal.crds import kinds, mountdigests, resource, secretdata
from shoal.crds import updatemeta as um
from shoal.runtime import informer as informer_mod
from shoal.runtime import logging as rt_logging
from shoal.runtime.reconcile import Context, ControllerSpec, Result
from shoal.store import errors

log = rt_logging.get_logger("shoal.controllers.rotation")

NAME: Final = "rotation"
_VALUE_KINDS: Final = {mountdigests.SECRET: common.kind("secrets"),
                       mountdigests.CONFIG: common.kind("configs")}


class Rotation:
    """One per controller-manager process: ``spec`` is the ControllerSpec to run."""

    def __init__(self, workers: int = 2) -> None:
        # The shared Service cache, known from the first reconcile on (every service is
        # reconciled when the controller starts, so nothing is missed before it).
        self._services: informer_mod.Informer | None = None
        self.spec = ControllerSpec(
            name=NAME, kind="services", reconcile=self.reconcile, workers=workers,
            watches=(("secrets", self._map_value), ("configs", self._map_value)))

    def _map_value(self, obj: resource.Resource) -> list[str]:
        services = self._services
        if services is None:
            return []
        kind = mountdigests.SECRET if obj.kind == "Secret" else mountdigests.CONFIG
        key = mountdigests.key(kind, obj.name)
        namespace = obj.namespace or resource.DEFAULT_NAMESPACE
        return [f"{namespace}/{svc.name}" for svc in services.list(namespace)
                if key in mountdigests.mounted(svc)]

    async def reconcile(self, ctx: Context, key: str) -> Result | None:
        self._services = ctx.informer
        service = ctx.get()
        if service is None or service.metadata.deletionTimestamp:
            return None
        namespace = service.namespace or resource.DEFAULT_NAMESPACE
        current = {entry: await _digest(ctx, namespace, entry)
                   for entry in mountdigests.mounted(service)}
        decision = rules.decide(service, current)
        if decision is None:
            return None
        new = service.deepcopy()
        annotations = new.metadata.annotations
        if decision.annotation is None:
            annotations.pop(mountdigests.MOUNTED_DIGESTS, None)
        else:
            annotations[mountdigests.MOUNTED_DIGESTS] = decision.annotation
        if decision.roll:
            force = new.spec.get("forceUpdate")
            new.spec["forceUpdate"] = (force if type(force) is int and force >= 0 else 0) + 1
            annotations[um.CHANGE_CAUSE] = decision.cause
        # Compare-and-swap over the cached version: a stale cache loses (ConflictError,
        # retried by the runtime) instead of rolling twice.
        await ctx.store.update(ctx.info, new)
        if decision.roll:
            ctx.log.info("rolling service: a mounted value changed", cause=decision.cause,
                         force_update=new.spec["forceUpdate"])
        else:
            ctx.log.debug("recorded mounted digests", digests=decision.annotation)
        return None


async def _digest(ctx: Context, namespace: str, entry: str) -> str | None:
    kind, name = mountdigests.split(entry)
    info: kinds.KindInfo = _VALUE_KINDS[kind]
    try:
        obj = await ctx.store.get(info, name, namespace)
    except errors.NotFoundError:
        return None
    return secretdata.digest(obj)


def controller_spec(workers: int = 2) -> ControllerSpec:
    """A fresh rotation controller (one per controller-manager process)."""
    return Rotation(workers).spec
