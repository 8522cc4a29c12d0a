"""What the process driver makes of a template's init, capabilities, sysctls and ulimits.

A process task is not a container: it runs on the host's filesystem with the agent's own
privileges, in its own network and UTS namespaces. Of the settings Docker applies to a
container, this module decides which the supervisor shim can honour for such a process
and turns them into plain numbers the shim (standard library only) applies in the child
between fork and exec; what it cannot honour rejects the task, with the reason:

* ``ulimits``: ``setrlimit`` in the child. Raising a hard limit above the agent's own
  needs CAP_SYS_RESOURCE, which the child checks at once (the task's log says so).
* ``sysctls``: written under ``/proc/sys`` by the child once it has its own network
  namespace (``net.*``) and, when an IPC parameter is asked for, its own IPC namespace
  (``kernel.msg*``/``shm*``/``sem``, ``fs.mqueue.*``), so they change the task's
  namespaces only, as in a container.
* ``capDrop``: removed from the child's bounding set (and inheritable and ambient sets),
  so no program it runs can hold them. ``ALL`` drops all but the added ones.
* ``capAdd``: a root task already holds every capability the agent holds (there is no
  container default set to add to), so an added capability is one to keep; refused when
  the agent itself lacks it, or when the task runs as another user, who loses every
  capability on the change of user.
* ``init``: accepted and nothing to do. What Docker's init gives a container — zombies
  reaped, the stop signal reaching every process — a process task has already: its
  orphans go to the host's init, and the stop signal goes to its whole process group.
"""

from __future__ import annotations

import dataclasses
import resource
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from shoal.agent.exec.executor import TaskRejectedError
from shoal.crds import template as tpl

#: RLIMIT_LOCKS is Linux's 10; Python's resource module has no name for it.
_RLIMIT: Final = {
    "core": resource.RLIMIT_CORE, "cpu": resource.RLIMIT_CPU, "data": resource.RLIMIT_DATA,
    "fsize": resource.RLIMIT_FSIZE, "locks": 10, "memlock": resource.RLIMIT_MEMLOCK,
    "msgqueue": resource.RLIMIT_MSGQUEUE, "nice": resource.RLIMIT_NICE,
    "nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC,
    "rss": resource.RLIMIT_RSS, "rtprio": resource.RLIMIT_RTPRIO,
    "rttime": resource.RLIMIT_RTTIME, "sigpending": resource.RLIMIT_SIGPENDING,
    "stack": resource.RLIMIT_STACK,
}


@dataclasses.dataclass(frozen=True)
class Privileges:
    """The shim's instructions: ``rlimits`` as (resource, soft, hard) with
    RLIM_INFINITY for unlimited, ``sysctls`` as /proc/sys paths to values,
    ``new_ipc`` whether an IPC namespace is needed for them, ``drop_caps`` the
    capability numbers to remove from the bounding set."""

    rlimits: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
    sysctls: dict[str, str] = dataclasses.field(default_factory=dict)
    new_ipc: bool = False
    drop_caps: list[int] = dataclasses.field(default_factory=list)

    def as_spec(self) -> dict[str, Any]:
        return {"rlimits": self.rlimits, "sysctls": self.sysctls, "new_ipc": self.new_ipc,
                "drop_caps": self.drop_caps}


def agent_capabilities() -> int:
    """The agent's own bounding set, as a bit mask (bit N: capability number N)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16)
    return 0


def last_capability() -> int:
    """The highest capability number this kernel knows."""
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return len(tpl.CAPABILITIES) - 1


def privileges(template: Mapping[str, Any], uid: int, held: int, last_cap: int) -> Privileges:
    """What to apply for ``template`` in a task running as ``uid`` on an agent holding
    the capabilities ``held`` (a mask); TaskRejectedError (or the template's own
    TemplateError) for what cannot be honoured."""
    tpl.init(template)  # checked; nothing to do (see the module docstring)
    caps = tpl.capabilities(template)
    known = range(min(last_cap, len(tpl.CAPABILITIES) - 1) + 1)
    added = set(known) if tpl.ALL_CAPABILITIES in caps.add else \
        {tpl.CAPABILITIES.index(c) for c in caps.add}
    if caps.add and uid != 0:
        raise TaskRejectedError(
            f"capAdd {', '.join(caps.add)}: the process driver cannot give capabilities to "
            f"user {uid}, who loses them all on the change of user; run the task as root, "
            "or on a node with the docker driver")
    missing = [tpl.CAPABILITIES[n] for n in sorted(added) if not held & (1 << n)]
    if missing and tpl.ALL_CAPABILITIES not in caps.add:
        raise TaskRejectedError(
            f"capAdd {', '.join(missing)}: this node's agent does not hold "
            f"{'it' if len(missing) == 1 else 'them'} itself, so its process tasks cannot "
            "either; run the task on a node with the docker driver")
    if caps.drops_all:
        dropped = [n for n in known if n not in added]
    else:
        dropped = [n for n in (tpl.CAPABILITIES.index(c) for c in caps.drop) if n in known]
    sysctls = tpl.sysctls(template)
    return Privileges(
        rlimits=[(_RLIMIT[u.name], _rlim(u.soft), _rlim(u.hard))
                 for u in tpl.ulimits(template)],
        sysctls={"/proc/sys/" + key.replace(".", "/"): value
                 for key, value in sysctls.items()},
        new_ipc=any(not key.startswith("net.") for key in sysctls),
        drop_caps=sorted(dropped))


def _rlim(value: int) -> int:
    return resource.RLIM_INFINITY if value == tpl.UNLIMITED else value
