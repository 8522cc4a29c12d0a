"""What the nodes hold against what etcd shows, from the hollow agents' journals.

A hollow agent started with ``--hollow-state`` appends every workload it starts, stops
or removes to a journal (shoal/agent/exec/hollow.py) before the call returns: it is the
node's "container runtime", readable without asking the agent. Read-only here: lines
are parsed, never compacted (the agent owns the file).

Checked once the cluster has settled: no task shown running on a ready node whose
workload the node does not run, and no workload running on a node without a task that
is desired running there (a leaked container).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.chaoslib.invariants import Checker, Violation
from shoal.crds import taskstates as ts


def running_workloads(journal: Path) -> dict[str, dict[str, Any]]:
    """uid -> workload record, for the workloads started and not stopped or removed."""
    out: dict[str, dict[str, Any]] = {}
    if not journal.exists():
        return out
    now = time.time()
    for raw in journal.read_bytes().splitlines():
        try:
            entry = json.loads(raw)
            op = entry["op"]
            if op == "start":  # a compacted journal starts stopped workloads as exited
                if entry["w"].get("state") == "exited":
                    out.pop(entry["w"]["uid"], None)
                else:
                    out[entry["w"]["uid"]] = entry["w"]
            elif op in ("stop", "remove"):
                out.pop(entry["uid"], None)
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line
    return {uid: w for uid, w in out.items()
            if w.get("exit_at") is None or float(w["exit_at"]) > now}


def mismatches(checker: Checker, journals: dict[str, Path]) -> list[Violation]:
    registry = checker.registry
    ready = {key[len(registry) + len("nodes/"):] for key, obj in checker.objects.items()
             if key.startswith(f"{registry}nodes/")
             and (obj.get("status") or {}).get("state") == "ready"}
    tasks = {key: obj for key, obj in checker.objects.items()
             if key.startswith(f"{registry}tasks/")}
    by_uid = {str(t["metadata"].get("uid")): (k, t) for k, t in tasks.items()}
    out: list[Violation] = []
    for node, path in journals.items():
        held = running_workloads(path)
        if node not in ready:
            continue
        for key, task in tasks.items():
            spec, status = task.get("spec") or {}, task.get("status") or {}
            if spec.get("nodeName") == node and status.get("state") == ts.RUNNING \
                    and str(task["metadata"].get("uid")) not in held:
                out.append(Violation("host", checker.revision, f"task shown running on ready "
                                     f"node {node}, which does not run it", (key,)))
        for uid, wl in held.items():
            found = by_uid.get(uid)
            desired = found and (found[1].get("spec") or {}).get("desiredState", "running")
            if found is None or ts.RANK.get(str(desired), 0) > ts.RUNNING_RANK:
                shown = "its task is gone" if found is None else (
                    f"its task is desired {desired}, shown "
                    f"{(found[1].get('status') or {}).get('state')} "
                    f"({(found[1].get('status') or {}).get('message')!r}) on "
                    f"{(found[1].get('spec') or {}).get('nodeName')}")
                out.append(Violation("host", checker.revision, f"node {node} runs workload "
                                     f"{wl.get('name')} (uid {uid}): {shown}",
                                     (found[0],) if found else ()))
    return out


class RunningWatch:
    """The "shown running, not running" check *during* a run, every ``every`` seconds.

    etcd (through the watch) and a node's journal are read at slightly different
    moments, so one look can catch a task between its workload stopping and its status
    saying so. A task is reported only when two looks ``every`` seconds apart both find
    it shown running and desired running, on a node ready both times, with the very
    same object (no write in between), and its workload not running on that node.
    """

    def __init__(self, checker: Checker, journals: dict[str, Path]) -> None:
        self.checker = checker
        self.journals = journals
        self.suspects: dict[str, object] = {}  # task key -> the object as last seen
        self.violations: list[Violation] = []
        self.reported: set[str] = set()

    def look(self) -> None:
        c = self.checker
        registry = c.registry
        ready = {key[len(registry) + len("nodes/"):] for key, obj in c.objects.items()
                 if key.startswith(f"{registry}nodes/")
                 and (obj.get("status") or {}).get("state") == "ready"}
        held: dict[str, set[str]] = {}
        suspects: dict[str, object] = {}
        for key, task in c.objects.items():
            if not key.startswith(f"{registry}tasks/"):
                continue
            spec, status = task.get("spec") or {}, task.get("status") or {}
            node = spec.get("nodeName")
            if status.get("state") != ts.RUNNING or node not in ready or ts.RANK.get(
                    str(spec.get("desiredState") or "running"), 0) > ts.RUNNING_RANK:
                continue
            if node not in held:
                path = self.journals.get(str(node))
                held[node] = set(running_workloads(path)) if path is not None else set()
            if str(task["metadata"].get("uid")) in held[node]:
                continue
            suspects[key] = task
            if self.suspects.get(key) is task and key not in self.reported:
                self.reported.add(key)
                self.violations.append(Violation(
                    "host", c.revision, f"task shown running and desired running on ready "
                    f"node {node} for two looks, which does not run it", (key,)))
        self.suspects = suspects
