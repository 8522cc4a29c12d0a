"""``Valid`` conditions for the kinds no other controller judges: Networks, Secrets, Configs.

The orchestrator marks a Service or Task whose stored form it cannot act on
(``Valid=False`` with admission's messages); a Network, Secret or Config written straight
into etcd with a spec admission would refuse had only a warning in some log. This
controller gives each such object the same condition, so ``swctl describe`` says what is
wrong with it, and sets ``Valid=True`` again once it is fixed. A valid object that never
had the condition is not written to: a healthy cluster costs one admission per change.

Admission here is of the stored object with its status left out (status is the
controllers' output, not the user's input), against the built-in kinds.
"""

from __future__ import annotations

from typing import Final

from shoal.crds import admission, conditions, kinds, resource
from shoal.runtime import status
from shoal.runtime.reconcile import Context, ControllerSpec, Result

VALID: Final = "Valid"
KINDS: Final = ("networks", "secrets", "configs")


def problems(obj: resource.Resource, registry: kinds.Registry) -> list[str]:
    """Admission's messages about ``obj`` as stored (status aside); empty when valid."""
    doc = obj.to_dict()
    doc["status"] = {}
    doc["metadata"].pop("resourceVersion", None)
    try:
        admission.admit(doc, registry)
    except admission.ValidationError as exc:
        return [str(e) for e in exc.errors] or [str(exc)]
    except Exception as exc:  # a validator bug must not stop the controller
        return [f"cannot validate: {type(exc).__name__}: {exc}"]
    return []


class Validity:
    def __init__(self, plural: str) -> None:
        self._registry = kinds.Registry.builtin()
        self.spec = ControllerSpec(name=f"validity-{plural}", kind=plural,
                                   reconcile=self.reconcile)

    async def reconcile(self, ctx: Context, key: str) -> Result | None:
        obj = ctx.get()
        if obj is None:
            return None
        found = problems(obj, self._registry)
        current = conditions.get_condition(obj, VALID)
        if not found:
            if current is None or current.get("status") == "True":
                return None
            cond = status.Condition(VALID, True, "Valid", "")
        else:
            message = "; ".join(found)[:4000]
            if current is not None and current.get("status") == "False" \
                    and current.get("message") == message:
                return None
            ctx.log.warning("stored object is not valid", problems=found)
            cond = status.Condition(VALID, False, "InvalidSpec", message)
        await ctx.update_status(obj, conditions=[cond], observed_generation=False)
        return None


def controller_specs() -> list[ControllerSpec]:
    """One fresh controller per kind (one set per controller-manager process)."""
    return [Validity(plural).spec for plural in KINDS]
