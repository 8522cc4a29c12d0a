"""Status conditions, Kubernetes style: one entry per ``type``, transition time kept stable.

Controllers and agents report trouble with an object by setting a condition on it rather
than crashing, so this helper lives in the lowest layer where all of them can reach it.
"""

from __future__ import annotations

from typing import Any

from shoal.crds import resource


def set_condition(obj: resource.Resource, type_: str, status: bool | str, reason: str = "",
                  message: str = "") -> bool:
    """Set or update condition ``type_`` in ``obj.status``; return True if anything changed.

    ``lastTransitionTime`` only moves when ``status`` flips, so re-reconciling an object
    that is already in the reported state writes nothing.
    """
    status_str = status if isinstance(status, str) else ("True" if status else "False")
    conditions = obj.status.get("conditions")
    if not isinstance(conditions, list) or not all(isinstance(c, dict) for c in conditions):
        # Written by hand into etcd: keep the conditions that are conditions, so the one
        # being set (often Valid=False, saying what is wrong) can be.
        kept = [c for c in conditions if isinstance(c, dict)] \
            if isinstance(conditions, list) else []
        conditions = obj.status["conditions"] = kept
    for cond in conditions:
        if cond.get("type") == type_:
            changed = False
            if cond.get("status") != status_str:
                cond["status"] = status_str
                cond["lastTransitionTime"] = resource.now_rfc3339()
                changed = True
            for field, value in (("reason", reason), ("message", message)):
                if cond.get(field) != value:
                    cond[field] = value
                    changed = True
            return changed
    conditions.append({"type": type_, "status": status_str, "reason": reason,
                       "message": message, "lastTransitionTime": resource.now_rfc3339()})
    return True


def get_condition(obj: resource.Resource, type_: str) -> dict[str, Any] | None:
    conditions = obj.status.get("conditions")
    for cond in conditions if isinstance(conditions, list) else ():
        if isinstance(cond, dict) and cond.get("type") == type_:
            return dict(cond)
    return None


def is_true(obj: resource.Resource, type_: str) -> bool:
    cond = get_condition(obj, type_)
    return cond is not None and cond.get("status") == "True"
