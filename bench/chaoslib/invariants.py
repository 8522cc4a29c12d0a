"""Invariant checkers over every etcd revision of a cluster's registry.

Pure logic, fed by ``watcher.follow``: each revision's events are applied to a copy of
the registry and only the services the revision touched are checked again, so a watch
that misses nothing makes "never" mean never, not "never when a poll looked".

What is checked (each violation names the keys and revisions that show it):

* **slot**: no replicated slot with two live tasks desired running, unless the older is
  marked ``shoal.io/replaced-by`` (a start-first overlap). "Live" means not observed in
  an end state: a task that has ended holds nothing, whatever its desired state says.
* **floor**: never fewer running than the update rules allow: once a service has
  converged, ``min(replicas, running when it converged) - allowance`` tasks run, where
  the allowance is ``parallelism`` (stop-first) while a rollout is under way (its
  template differs from the one it last converged with), else 0.
  Losing a node (agent faults, drains) legitimately drops tasks, so the harness marks
  those windows ``disturbed``, as is a service with a task that ended while desired
  running (a crash: the restart policy's business); the floor counts again only after
  the service's next convergence.
* **resurrected**: a deleted key never comes back with the uid it had; a key's uid never
  changes without a delete in between.
* **lost**: an object the workload created is never deleted unless the workload deleted it.
* **monotonic**: a task's ``status.state`` and ``spec.desiredState`` never move backwards
  in Shoal's task-state order (shoal/crds/taskstates.py).

Convergence (``converged``) is a service with exactly ``replicas`` live tasks desired
running, each in its own slot (any numbers: a scale-down keeps whichever slots Swarm's
rule leaves, not 1..replicas), all running the service's current template.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from shoal.controllers.taskspec import REPLACED_BY
from shoal.crds import taskstates as ts
from shoal.crds.resource import Resource


@dataclasses.dataclass(frozen=True)
class Violation:
    kind: str
    revision: int
    detail: str
    keys: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"[{self.kind}] rev {self.revision}: {self.detail} (keys: {', '.join(self.keys)})"


@dataclasses.dataclass
class ServiceView:
    """One service's state as of the last revision that touched it."""

    established: int = 0  # running tasks when it last converged (0: not since disturbed)
    converged: bool = False
    converged_since: int = 0  # revision it last became converged at
    converged_time: float = 0.0  # time.monotonic() when it last became converged
    template: Any = None  # the template it last converged with


def _uid(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def _rank(state: Any) -> int:
    return ts.RANK.get(state, -1) if isinstance(state, str) else -1


class Checker:
    """Applies revisions of the registry (``<prefix>/registry/``) and collects violations."""

    def __init__(self, registry: str) -> None:
        self.registry = registry  # the key prefix of the registry, with a trailing slash
        self.objects: dict[str, dict[str, Any]] = {}
        self.deleted_uids: dict[str, set[str]] = {}
        self.tasks_by_service: dict[str, set[str]] = {}  # "ns/service" -> task keys
        self.services: dict[str, ServiceView] = {}
        self.violations: list[Violation] = []
        self.revision = 0
        self.revisions_seen = 0
        self.disturbers: set[str] = set()
        #: service keys the workload created and has not asked to delete
        self.owned: set[str] = set()
        self.convergences = 0

    # --- the workload's and the fault injector's notes ---

    @property
    def disturbed(self) -> bool:
        return bool(self.disturbers)

    def disturb(self, on: bool, reason: str) -> None:
        """Tasks may legitimately be lost (a node going away, a drain) while ``reason``
        holds: suspend the floor until each service converges again after it ends."""
        if on:
            self.disturbers.add(reason)
            for view in self.services.values():
                view.established = 0
        else:
            self.disturbers.discard(reason)

    def service_key(self, name: str, namespace: str = "default") -> str:
        return f"{self.registry}services/{namespace}/{name}"

    # --- feeding ---

    def apply(self, revision: int, events: list[tuple[str, dict[str, Any] | None]]) -> None:
        """One revision's events: (key, object) puts and (key, None) deletes."""
        self.revision = revision
        self.revisions_seen += 1
        touched: set[str] = set()
        for key, obj in events:
            kind = key[len(self.registry):].partition("/")[0]
            old = self.objects.get(key)
            if obj is None:
                if old is not None:
                    self.deleted_uids.setdefault(key, set()).add(_uid(old))
                    self.objects.pop(key)
                if kind == "services" and key in self.owned:
                    self.violations.append(Violation(
                        "lost", revision, "a service the workload created was deleted "
                        "without the workload deleting it", (key,)))
                    self.owned.discard(key)
                if kind == "tasks" and old is not None:
                    svc = self._task_service(key, old)
                    self.tasks_by_service.get(svc, set()).discard(key)
                    touched.add(svc)
                if kind == "services":
                    touched.add(self._svc_id(key))
                continue
            uid = _uid(obj)
            if uid and uid in self.deleted_uids.get(key, ()):
                self.violations.append(Violation(
                    "resurrected", revision, f"deleted object came back with uid {uid}",
                    (key,)))
            if old is not None and uid and _uid(old) and _uid(old) != uid:
                self.violations.append(Violation(
                    "resurrected", revision, f"uid changed from {_uid(old)} to {uid} "
                    "without a delete", (key,)))
            if kind == "tasks":
                if old is not None and _uid(old) == uid:
                    self._monotonic(key, old, obj, revision)
                svc = self._task_service(key, obj)
                self.tasks_by_service.setdefault(svc, set()).add(key)
                touched.add(svc)
            elif kind == "services":
                touched.add(self._svc_id(key))
            self.objects[key] = obj
        for svc in touched:
            self._check_service(svc, revision)

    def stale_tasks(self, node: str) -> list[str]:
        """Tasks on ``node`` the controllers no longer want (desired past running) that
        it has not yet reported ended: what a node cut off and back must stop."""
        prefix = f"{self.registry}tasks/"
        out = []
        for key, obj in self.objects.items():
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            if (key.startswith(prefix) and spec.get("nodeName") == node
                    and _rank(spec.get("desiredState") or "running") > ts.RUNNING_RANK
                    and _rank(status.get("state")) <= ts.RUNNING_RANK):
                out.append(key)
        return out

    def shown_states(self, node: str) -> dict[str, str]:
        """What a user is shown (``taskstates.shown_state``) for the tasks on ``node`` that
        have not ended: ``unknown`` for each while the node is cut off and marked down."""
        prefix = f"{self.registry}tasks/"
        out = {}
        for key, obj in self.objects.items():
            status = obj.get("status") or {}
            if (key.startswith(prefix) and (obj.get("spec") or {}).get("nodeName") == node
                    and _rank(status.get("state")) <= ts.RUNNING_RANK):
                out[key] = ts.shown_state(Resource.from_dict(obj))
        return out

    def unconverged(self) -> list[str]:
        return sorted(svc for svc, view in self.services.items() if not view.converged)

    def _svc_id(self, key: str) -> str:
        ns, _, name = key[len(self.registry) + len("services/"):].partition("/")
        return f"{ns}/{name}"

    def _task_service(self, key: str, task: dict[str, Any]) -> str:
        ns = (task.get("metadata") or {}).get("namespace") or "default"
        return f"{ns}/{(task.get('spec') or {}).get('serviceName')}"

    def _monotonic(self, key: str, old: dict[str, Any], new: dict[str, Any],
                   revision: int) -> None:
        for where, field in (("status", "state"), ("spec", "desiredState")):
            before = (old.get(where) or {}).get(field)
            after = (new.get(where) or {}).get(field)
            if before is None or before == after:
                continue
            if _rank(after) < _rank(before):
                self.violations.append(Violation(
                    "monotonic", revision, f"{where}.{field} moved back from {before} to "
                    f"{after} (task uid {_uid(new)})", (key,)))

    # --- per-service checks ---

    def service_spec(self, svc: str) -> dict[str, Any] | None:
        ns, _, name = svc.partition("/")
        obj = self.objects.get(self.service_key(name, ns))
        return None if obj is None else dict(obj.get("spec") or {})

    def _active(self, svc: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for key in self.tasks_by_service.get(svc, ()):
            task = self.objects[key]
            spec, status = task.get("spec") or {}, task.get("status") or {}
            if _rank(spec.get("desiredState") or "running") > ts.RUNNING_RANK:
                continue
            if _rank(status.get("state")) > ts.RUNNING_RANK:
                continue  # ended: holds nothing
            out.append((key, task))
        return out

    def is_converged(self, svc: str) -> bool:
        spec = self.service_spec(svc)
        if spec is None:
            return not self._active(svc)
        if (spec.get("mode") or "replicated") != "replicated":
            return True
        replicas = int(spec.get("replicas", 1))
        active = self._active(svc)
        # One task per slot and ``replicas`` slots, whatever their numbers: a scale-down
        # removes slots from the nodes running the most replicas first, as Swarm does,
        # so 3 -> 2 may leave slots 1 and 3.
        slots = [int((t.get("spec") or {}).get("slot") or 0) for _, t in active]
        if len(slots) != replicas or len(set(slots)) != replicas or min(slots, default=1) < 1:
            return False
        template = spec.get("template")
        return all((t.get("status") or {}).get("state") == ts.RUNNING
                   and (t.get("spec") or {}).get("template") == template for _, t in active)

    def _check_service(self, svc: str, revision: int) -> None:
        spec = self.service_spec(svc)
        view = self.services.setdefault(svc, ServiceView())
        active = self._active(svc)
        per_slot: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        for key, task in active:
            slot = int((task.get("spec") or {}).get("slot") or 0)
            if slot > 0:
                per_slot.setdefault(slot, []).append((key, task))
        for slot, held in per_slot.items():
            unmarked = [k for k, t in held
                        if not ((t.get("metadata") or {}).get("annotations") or {}).get(
                            REPLACED_BY)]
            if len(unmarked) > 1:
                self.violations.append(Violation(
                    "slot", revision, f"service {svc} slot {slot} has {len(unmarked)} live "
                    "tasks desired running, none of them replaced-by another",
                    tuple(sorted(unmarked))))
        if spec is None:
            self.services.pop(svc, None)
            return
        if (spec.get("mode") or "replicated") != "replicated":
            view.converged = True
            return
        replicas = int(spec.get("replicas", 1))
        running = sum(1 for _, t in active if (t.get("status") or {}).get("state") == ts.RUNNING)
        converged = self.is_converged(svc)
        if converged and not view.converged:
            view.converged_since = revision
            view.converged_time = time.monotonic()
            self.convergences += 1
        view.converged = converged
        if self.disturbed or self._crashed(svc):
            view.established = 0
            return
        if converged:
            view.established = running
            view.template = spec.get("template")
            return
        rollout = spec.get("template") != view.template
        floor = min(replicas, view.established) - (
            self._allowance(spec, replicas) if rollout else 0)
        if view.established and running < floor:
            self.violations.append(Violation(
                "floor", revision, f"service {svc}: {running} running, the update rules "
                f"allow no fewer than {floor} (replicas {replicas})",
                tuple(sorted(k for k, _ in active))))

    def _crashed(self, svc: str) -> bool:
        """A task desired running has ended (its process exited, its node lost it): not
        the update rules' doing; the restart policy takes over."""
        for key in self.tasks_by_service.get(svc, ()):
            task = self.objects[key]
            if _rank((task.get("spec") or {}).get("desiredState") or "running") \
                    <= ts.RUNNING_RANK and _rank((task.get("status") or {}).get("state")) \
                    > ts.RUNNING_RANK:
                return True
        return False

    @staticmethod
    def _allowance(spec: dict[str, Any], replicas: int) -> int:
        """How many fewer may run while a rollout is under way (from the template change
        until the service converges again): stop-first takes ``parallelism`` slots down
        at a time (0: all of them), start-first none."""
        update = spec.get("updateConfig") or {}
        if str(update.get("order") or "stop-first") == "start-first":
            return 0
        parallelism = int(update.get("parallelism", 1) or 0)
        return replicas if parallelism == 0 else parallelism

    def describe(self, svc: str) -> str:
        """A service's state in one line, for a report of what did not converge."""
        spec = self.service_spec(svc) or {}
        ns, _, name = svc.partition("/")
        obj = self.objects.get(self.service_key(name, ns)) or {}
        update = (obj.get("status") or {}).get("update") or {}
        tasks = []
        for key in sorted(self.tasks_by_service.get(svc, ())):
            t = self.objects[key]
            tspec, tstatus = t.get("spec") or {}, t.get("status") or {}
            if _rank(tspec.get("desiredState") or "running") > ts.RUNNING_RANK:
                continue
            same = "current" if tspec.get("template") == spec.get("template") else "old"
            tasks.append(f"{key.rsplit('/', 1)[1]}@{tspec.get('nodeName')}:"
                         f"{tstatus.get('state')}({same})")
        return (f"{svc}: replicas {spec.get('replicas')}, update "
                f"{update.get('state')} {update.get('message', '')!r}; desired running: "
                + (", ".join(tasks) or "none"))
