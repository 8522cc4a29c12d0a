"""What the rotation controller writes on one Service, decided without I/O.

Given the service (with its ``shoal.io/mounted-digests``, ``crds.mountdigests``) and the
current digest of each Secret and Config it mounts (None when one does not exist),
:func:`decide` answers with the annotation to record and whether to roll:

* nothing mounted and nothing recorded: nothing to do (a recorded map is dropped);
* no map recorded yet (a new service, or one from before this controller): record it,
  roll nothing -- its tasks were just made from these values;
* a recorded digest differs from the current one: record, bump ``spec.forceUpdate`` and
  say why in the change cause (``secret db_pass updated``);
* a mount added or removed: record only -- the spec change that added it rolls already;
* a mounted object missing: its recorded digest is kept, so deleting and re-creating a
  secret with a new value still rolls, and re-creating it unchanged does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from shoal.crds import mountdigests, resource


@dataclasses.dataclass(frozen=True)
class Decision:
    """``annotation``: the value to store (None: remove it); ``cause``: set when rolling."""

    annotation: str | None
    roll: bool = False
    cause: str = ""


def decide(service: resource.Resource, current: Mapping[str, str | None]) -> Decision | None:
    """None when the service is as it should be. ``current``: a digest per mounted key."""
    keys = mountdigests.mounted(service)
    recorded = mountdigests.recorded(service)
    stored = service.metadata.annotations.get(mountdigests.MOUNTED_DIGESTS)
    if not keys:
        return None if stored is None else Decision(annotation=None)
    known = recorded or {}
    wanted: dict[str, str] = {}
    for key in keys:
        digest = current.get(key)
        if digest is None:
            digest = known.get(key)  # missing now: remember what the tasks last got
        if digest is not None:
            wanted[key] = digest
    changed = [] if recorded is None else [
        key for key in keys if key in recorded and key in wanted
        and wanted[key] != recorded[key]]
    annotation = mountdigests.render(wanted)
    if not changed:
        return None if wanted == recorded else Decision(annotation=annotation)
    return Decision(annotation=annotation, roll=True, cause=cause_of(changed))


def cause_of(changed: list[str]) -> str:
    """``secret db_pass updated``; ``secret a, config b updated``."""
    names = [" ".join(mountdigests.split(key)) for key in changed]
    return f"{', '.join(names)} updated"
