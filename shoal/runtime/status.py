"""Status writes: ``observedGeneration``, conditions and free fields, with CAS retry.

``status.observedGeneration`` records which ``generation`` (spec version) the status
describes. It is taken from the object the caller reconciled, not from the re-read copy
after a conflict: if the spec changed in between, the status must not claim to describe
the new spec (the change triggers another reconcile anyway). Unchanged status writes
nothing. Events live in ``events``; ``record_event`` and ``list_events`` are re-exported
here because status and events are what ``swctl describe`` shows together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from shoal.crds import conditions as conditions_mod
from shoal.crds import kinds, resource
from shoal.runtime import cas
from shoal.runtime.events import list_events, record_event
from shoal.store import client

__all__ = ["Condition", "list_events", "record_event", "update_status"]


@dataclasses.dataclass(frozen=True)
class Condition:
    """One ``status.conditions`` entry to set (``lastTransitionTime`` is managed)."""

    type: str
    status: bool | str
    reason: str = ""
    message: str = ""


async def update_status(store: client.Store, info: kinds.KindInfo, obj: resource.Resource,
                        mutate: Callable[[resource.Resource], None] | None = None, *,
                        patch: Mapping[str, Any] | None = None,
                        conditions: Iterable[Condition] = (),
                        observed_generation: bool = True,
                        fence: client.Fence | None = None) -> resource.Resource | None:
    """Set status on ``obj`` and write it with CAS retry; returns the stored object.

    ``patch`` is merged into ``status`` key by key, ``conditions`` are set with
    :func:`shoal.crds.conditions.set_condition`, then ``mutate`` (if any) may change the
    object freely. All of it is re-applied to the fresh object after a conflict. Returns
    None if the object no longer exists.
    """
    generation = obj.metadata.generation
    conds = list(conditions)
    fields = dict(patch or {})

    def apply(o: resource.Resource) -> None:
        o.status.update(fields)
        for cond in conds:
            conditions_mod.set_condition(o, cond.type, cond.status, cond.reason, cond.message)
        if mutate is not None:
            mutate(o)
        if observed_generation:
            o.status["observedGeneration"] = generation

    return await cas.mutate(store, info, obj, apply, fence)
