"""What the nodes hold against what etcd shows, read from outside their agents.

A hollow agent started with ``--hollow-state`` appends every workload it starts, stops
or removes to a journal (shoal/agent/exec/hollow.py) before the call returns: it is the
node's "container runtime", readable without asking the agent. Read-only here: lines
are parsed, never compacted (the agent owns the file). A process-runtime node's tasks
are real processes: the driver's state directory names each task's pid and its start
time (``UID.json``, shoal/agent/process/driver.py), and ``/proc`` says whether that
process still runs; a supervisor shim still alive for a task whose files are gone is
found by its command line, which names the directory and the task uid.

Checked every 5 s during the run and once the cluster has settled: no task shown
running on a ready node whose workload the node does not run; once settled also no
workload running on a node without a task desired running there (a leaked container or
process).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Protocol

from bench.chaoslib.invariants import Checker, Violation
from shoal.agent.process.driver import DEFAULT_STATE_DIR
from shoal.cli.cluster import pid_alive
from shoal.crds import taskstates as ts

#: where the process runtime keeps each node's tasks (the agent has no flag for it)
PROCESS_STATE = DEFAULT_STATE_DIR / "process"
#: a chaos run's process nodes are named ``cp<i>-<run pid in hex>``
PROCESS_NODE = "cp"


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


class Host(Protocol):
    def running(self) -> dict[str, dict[str, Any]]:
        """uid -> a record (with a ``name``) of each workload the node runs now."""
        ...

    def kill_all(self) -> None:
        """End whatever the node still runs (the run is over)."""
        ...


class JournalHost:
    """A hollow node: its journal is its runtime."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal

    def running(self) -> dict[str, dict[str, Any]]:
        return running_workloads(self.journal)

    def kill_all(self) -> None:
        pass  # hollow workloads are lines in a file


def _proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (after the parenthesised name), None when gone or a
    zombie: with the pid it names one process, whatever reuses the pid later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


class ProcessHost:
    """A process-runtime node: ``<state>/process/<node>/`` and ``/proc``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _alive(self, pid: Any, starttime: Any) -> bool:
        if not isinstance(pid, int) or pid <= 0:
            return False
        found = _proc_starttime(pid)
        return found is not None and (starttime is None or found == starttime)

    def running(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if not self.dir.is_dir():
            return out
        for path in self.dir.glob("*.json"):
            uid = path.name[:-len(".json")]
            if "." in uid:
                continue  # UID.spec.json, UID.exit.json, UID.health.json
            try:
                run = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # replaced under us: the next look sees it
            if isinstance(run, dict) and self._alive(run.get("pid"), run.get("starttime")):
                out[uid] = {"name": uid, "pid": run["pid"]}
        for uid, pid in self.supervisors().items():
            if uid not in out and not (self.dir / f"{uid}.json").exists():
                # its files were removed while it still runs: a leak the files cannot show
                out[uid] = {"name": f"{uid} (supervisor {pid}, files removed)", "pid": pid}
        return out

    def supervisors(self) -> dict[str, int]:
        """task uid -> pid of each live supervisor shim of this node."""
        out: dict[str, int] = {}
        where = str(self.dir)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            words = [a.decode(errors="replace") for a in argv if a]
            if len(words) >= 3 and words[-3].endswith("shim.py") and words[-2] == where \
                    and _proc_starttime(int(entry)) is not None:
                out[words[-1]] = int(entry)
        return out

    def kill_all(self) -> None:
        # supervisors first: a live one would report its child's death and restart nothing,
        # but it is itself a process the run started
        for pid in [*self.supervisors().values(),
                    *(int(w["pid"]) for w in self.running().values())]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self) -> None:
        """Kill what the node still runs and delete its directory (the run is over)."""
        self.kill_all()
        shutil.rmtree(self.dir, ignore_errors=True)


def sweep() -> None:
    """Remove what a killed chaos run left in the process runtime's directory: the
    tasks of its process nodes (named after its pid, which is gone)."""
    if not PROCESS_STATE.is_dir():
        return
    for entry in PROCESS_STATE.iterdir():
        name = entry.name
        if not name.startswith(PROCESS_NODE) or "-" not in name:
            continue
        try:
            pid = int(name.rsplit("-", 1)[1], 16)
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            ProcessHost(entry).remove()


def mismatches(checker: Checker, nodes: dict[str, Host]) -> list[Violation]:
    registry = checker.registry
    ready = {key[len(registry) + len("nodes/"):] for key, obj in checker.objects.items()
             if key.startswith(f"{registry}nodes/")
             and (obj.get("status") or {}).get("state") == "ready"}
    tasks = {key: obj for key, obj in checker.objects.items()
             if key.startswith(f"{registry}tasks/")}
    by_uid = {str(t["metadata"].get("uid")): (k, t) for k, t in tasks.items()}
    out: list[Violation] = []
    for node, host in nodes.items():
        held = host.running()
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

    def __init__(self, checker: Checker, nodes: dict[str, Host]) -> None:
        self.checker = checker
        self.nodes = nodes
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
                host = self.nodes.get(str(node))
                held[node] = set(host.running()) if host is not None else set()
            if str(task["metadata"].get("uid")) in held[node]:
                continue
            suspects[key] = task
            if self.suspects.get(key) is task and key not in self.reported:
                self.reported.add(key)
                self.violations.append(Violation(
                    "host", c.revision, f"task shown running and desired running on ready "
                    f"node {node} for two looks, which does not run it", (key,)))
        self.suspects = suspects
