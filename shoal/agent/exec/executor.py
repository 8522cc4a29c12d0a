"""The executor contract: how the agent's task manager runs a task, whatever runs it.

Drivers (``hollow`` for scale work, ``docker`` through dockerd, ``process`` as a plain
child in its own network namespace) implement :class:`Executor`. The task manager owns
the task state machine and every etcd write; a driver only turns "this task should run"
into something running and reports what it sees. Every call is idempotent and keyed by
the task's uid, so an agent killed between any two calls and restarted continues
where it stopped: ``start`` adopts what is already there, ``remove`` of nothing is fine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

# Labels every driver puts on what it starts, so a restarted agent can find and adopt
# (or clean up) its own workloads. Docker users see them in `docker ps`.
LABEL_TASK_UID = "shoal.io/task-uid"
LABEL_TASK = "shoal.io/task"
LABEL_NAMESPACE = "shoal.io/namespace"
LABEL_SERVICE = "shoal.io/service"
LABEL_NODE = "shoal.io/node"


@dataclasses.dataclass(frozen=True)
class TaskFile:
    """A secret or config file the agent has written for a task (on its own tmpfs, with
    the owner and mode asked for): the driver bind-mounts ``source`` read-only at
    ``target`` inside the task, and never reads or copies it."""

    source: str
    target: str


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What a driver needs to know about one task (copied out of the Task resource)."""

    uid: str
    name: str
    namespace: str
    service: str
    node: str
    slot: int | None
    # The Task's spec.template, as written; read it through shoal.crds.template.
    template: Mapping[str, Any]
    # Its secrets and configs, ready on the node (shoal.agent.taskfiles); hollow ignores.
    files: tuple[TaskFile, ...] = ()


class TaskRejectedError(Exception):
    """The task can never run as specified (missing image, invalid mount...).

    The task manager marks the task ``rejected`` with this message instead of retrying.
    """


@dataclasses.dataclass(frozen=True)
class Observed:
    """What the driver sees of a task's workload right now."""

    state: str  # "missing" | "created" | "running" | "exited"
    exit_code: int | None = None
    error: str = ""
    health: str = "none"  # "none" (no check) | "starting" | "healthy" | "unhealthy"
    workload_id: str = ""  # container id or pid, shown in status
    pid: int | None = None  # the workload's init pid: its network namespace is /proc/PID/ns/net


MISSING = Observed("missing")


@dataclasses.dataclass(frozen=True)
class Managed:
    """A workload found on the node that carries Shoal's labels."""

    task_uid: str
    task_name: str
    namespace: str
    workload_id: str


@dataclasses.dataclass(frozen=True)
class LogLine:
    stream: str  # "stdout" | "stderr"
    line: bytes
    timestamp: float | None = None


class Executor(Protocol):
    """One driver instance serves one node."""

    name: str

    async def prepare(self, task: TaskSpec) -> None:
        """Make the image (or binary) available; TaskRejectedError if it never will be."""

    async def start(self, task: TaskSpec) -> Observed:
        """Create and start the workload, or adopt the one already running for task.uid."""

    async def observe(self, task_uid: str) -> Observed:
        """Current state of the task's workload (MISSING if there is none)."""

    async def stop(self, task_uid: str, grace: float, signal: str | None = None) -> None:
        """Stop with ``signal`` (default SIGTERM), SIGKILL after ``grace`` seconds."""

    async def remove(self, task_uid: str) -> None:
        """Remove the stopped workload and what it holds. Removing nothing is fine."""

    async def list_managed(self) -> list[Managed]:
        """Every workload on this node that this driver started (found by label)."""

    def changes(self) -> AsyncIterator[str]:
        """Task uids whose workload changed state (exit, health), as they happen."""
        ...

    def logs(self, task_uid: str, follow: bool = False, tail: int | None = None,
             timestamps: bool = False) -> AsyncIterator[LogLine]:
        """The workload's output; with ``follow``, keeps streaming until cancelled."""
        ...

    async def close(self) -> None:
        """Release connections; running workloads are left running (they get adopted)."""
