"""How a service's rollout proceeds: ``spec.updateConfig`` or ``spec.rollbackConfig``.

What it owns: Swarm's six fields and their defaults (parallelism 1, delay 0s,
failureAction pause, monitor 5s, maxFailureRatio 0, order stop-first), read leniently,
and which of the two sections applies: ``rollbackConfig`` for the generation the updater
wrote as a rollback (``shoal.io/rollback-generation``), ``updateConfig`` otherwise. A
rollback's failure action is pause or continue: a rollback is never itself rolled back.
Pure; ``swctl``'s wait reads the same rules (``pauses_after``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final, Literal

from shoal.crds import units
from shoal.crds import updatemeta as um
from shoal.crds.resource import Resource

ORDERS: Final = ("stop-first", "start-first")
FAILURE_ACTIONS: Final = ("pause", "continue", "rollback")
ROLLBACK_FAILURE_ACTIONS: Final = ("pause", "continue")
#: Service annotations of the update lifecycle (docs/updater.md); their one home is
#: ``crds/updatemeta``, which swctl reads too.
CHANGE_CAUSE: Final = um.CHANGE_CAUSE
ROLLBACK_REQUEST: Final = um.ROLLBACK_REQUEST
ROLLBACK_GENERATION: Final = um.ROLLBACK_GENERATION
#: Why the updater rolled back by itself (absent for an asked-for rollback).
ROLLBACK_REASON: Final = um.ROLLBACK_REASON
RESUMED_AT: Final = um.RESUMED_AT


@dataclasses.dataclass(frozen=True, slots=True)
class UpdateConfig:
    """How a rollout proceeds: Swarm's ``UpdateConfig`` with its defaults."""

    parallelism: int = 1  # tasks replaced at once; 0 = all at once
    delay: float = 0.0  # seconds between batches
    order: Literal["stop-first", "start-first"] = "stop-first"
    failure_action: Literal["pause", "continue", "rollback"] = "pause"
    monitor: float = 5.0
    max_failure_ratio: float = 0.0

    def pauses_after(self, failures: int, total: int) -> bool:
        """Whether ``failures`` failed new tasks out of ``total`` slots stop the update
        (failure action pause or rollback, past maxFailureRatio). The updater decides
        with it, and ``swctl``'s wait reads the same rule."""
        return (self.failure_action != "continue" and failures > 0
                and failures > self.max_failure_ratio * max(total, 1))

    @classmethod
    def from_spec(cls, value: Any, section: str = "updateConfig"
                  ) -> tuple[UpdateConfig, list[str]]:
        """``spec.<section>`` read leniently: a field that cannot be read keeps Swarm's
        default and is named in the problems (the API server validates manifests; this
        guards against whatever reached etcd some other way, which must not stop the
        service's rollout or crash the loop)."""
        spec = value if isinstance(value, dict) else {}
        problems: list[str] = []
        fields: dict[str, Any] = {}
        actions = ROLLBACK_FAILURE_ACTIONS if section == "rollbackConfig" else FAILURE_ACTIONS

        def bad(name: str, why: str) -> None:
            problems.append(f"spec.{section}.{name} {spec.get(name)!r}: {why}; "
                            f"using the default")

        par = spec.get("parallelism")
        if par is not None:
            if type(par) is int and par >= 0:
                fields["parallelism"] = par
            else:
                bad("parallelism", "must be an integer >= 0 (0 = all at once)")
        for name in ("delay", "monitor"):
            if spec.get(name) is not None:
                try:
                    fields[name] = units.parse_duration(spec[name])
                except ValueError as exc:
                    bad(name, str(exc))
        if spec.get("order") is not None:
            if spec["order"] in ORDERS:
                fields["order"] = spec["order"]
            else:
                bad("order", "must be stop-first or start-first")
        if spec.get("failureAction") is not None:
            if spec["failureAction"] in actions:
                fields["failure_action"] = spec["failureAction"]
            else:
                bad("failureAction", "must be " + (" or ".join(actions) if len(actions) == 2
                                                   else "pause, continue or rollback"))
        ratio = spec.get("maxFailureRatio")
        if ratio is not None:
            if isinstance(ratio, int | float) and not isinstance(ratio, bool) and (
                    0 <= ratio <= 1):
                fields["max_failure_ratio"] = float(ratio)
            else:
                bad("maxFailureRatio", "must be a number from 0 to 1")
        return dataclasses.replace(SWARM_DEFAULTS, **fields), problems


#: Swarm's defaults: what a service without ``updateConfig`` gets.
SWARM_DEFAULTS: Final = UpdateConfig()


def is_rollback(service: Resource) -> bool:
    """Is the service's current generation one the updater wrote as a rollback?"""
    mark = service.metadata.annotations.get(ROLLBACK_GENERATION)
    return mark is not None and mark == str(service.metadata.generation)


def for_service_with_problems(service: Resource) -> tuple[UpdateConfig, list[str]]:
    """The config the current generation rolls out with, and what could not be read."""
    if is_rollback(service):
        return UpdateConfig.from_spec(service.spec.get("rollbackConfig"), "rollbackConfig")
    return UpdateConfig.from_spec(service.spec.get("updateConfig"))


def for_service(service: Resource) -> UpdateConfig:
    """``for_service_with_problems`` without the problems."""
    return for_service_with_problems(service)[0]
