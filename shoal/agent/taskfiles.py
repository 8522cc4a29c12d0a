"""The secret and config files of one node's tasks: fetched, opened, written on a tmpfs.

Before a task's workload is started, :meth:`TaskFiles.prepare` reads the Secrets and
Configs its template names (``template.secrets[]`` / ``template.configs[]``) with point
gets of the node's own copies, ``<p>/nodes/<node>/secrets|configs/<ns>/<name>``, which
the distributor controller writes for what the node's tasks use (a worker's etcd user
may read no Secret or Config object; docs/security.md) -- never a watch or a list --
opens each sealed Secret with the cluster's keyring (:mod:`shoal.crds.sealed`), and
writes every file under ``<root>/<task uid>/`` with the uid, gid and mode the reference
asks for. The driver then bind-mounts each file read-only at its target
(:class:`~shoal.agent.exec.executor.TaskFile`); it never copies one.

Why a tmpfs the agent mounts itself: a secret must never reach the node's disk, and
``/run`` is not a tmpfs on every host. ``<root>`` is mounted (:mod:`shoal.agent.tmpfs`:
``nosuid``, ``nodev``, mode 0700, root-only) on first use; a file is written to it and
nowhere else.

Crash safety: every call is idempotent. ``prepare`` rewrites a task's files whole
(write to a temporary name, then rename) from what etcd holds now, so an agent killed
half-way and restarted simply prepares again; a running workload keeps the files it
mounted (a bind mount holds the inode, not the name). ``remove`` drops a task's
directory once its workload is removed; ``sweep`` drops the directories of tasks that
no longer exist (removed while no agent was looking); ``close`` unmounts the tmpfs when
no task has files left, so a stopped node leaves nothing mounted behind.

Whose mount namespace: the files must be seen where the bind mount is made -- by
dockerd for the docker driver, by the agent's own children for the process driver. An
agent of a network-namespace node runs under ``ip netns exec``, which gives it a mount
namespace of its own, so a tmpfs it mounted itself would be invisible to dockerd. So the
tmpfs is mounted in the *consumer's* mount namespace (``nsenter --mount`` when that is
not ours) and the agent reaches it through ``/proc/<consumer pid>/root``.

A problem the task can do nothing about by retrying -- a Secret or Config that does not
exist (the distributor leaves a tombstone copy saying so), a Secret stored unsealed or
that does not open with this agent's keyring, an agent started without a keyring -- is a
:class:`TaskRejectedError` saying what and how to fix. A copy that has not arrived yet
(the distributor runs a moment after the assignment) is an ordinary error: the task
manager retries it with backoff.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

from shoal.agent import tmpfs
from shoal.agent.exec.executor import TaskFile, TaskRejectedError, TaskSpec
from shoal.crds import kinds, resource, sealed
from shoal.crds import template as tpl
from shoal.store import client, errors, projections

log = structlog.get_logger("shoal.agent.taskfiles")


#: The distributor's tombstone: the object a task names does not exist
#: (``shoal.controllers.distributor.copies``; the agent cannot import controllers).
MISSING_ANNOTATION = "shoal.io/missing"


class CopyNotHereError(Exception):
    """The node's copy of a Secret or Config is not written yet: retried, not rejected."""


def node_root(state_dir: Path | str, node: str) -> Path:
    """Where a node's task files live: the tmpfs ``<state dir>/taskfiles/<node>``."""
    return Path(state_dir) / "taskfiles" / node


@dataclasses.dataclass(frozen=True)
class _Wanted:
    """One file a task asks for: which object, where, owned how."""

    kind: str  # "secret" | "config"
    ref: tpl.FileRef
    name: str  # the file's name in the task's directory


def wanted(template: Mapping[str, Any]) -> list[_Wanted]:
    """The files a template asks for (TemplateError if a reference is malformed)."""
    out = [_Wanted("secret", ref, f"secret-{i}") for i, ref in enumerate(tpl.secrets(template))]
    out += [_Wanted("config", ref, f"config-{i}") for i, ref in enumerate(tpl.configs(template))]
    return out


class TaskFiles:
    """The files of one node's tasks, under ``root`` (a tmpfs this object mounts) as the
    process ``consumer()`` names sees it (None: this agent's own mount namespace)."""

    def __init__(self, store: client.Store, node: str, root: Path,
                 keyring: Path | None,
                 consumer: Callable[[], int | None] | None = None) -> None:
        # The node's copies, read as if they were the registry (``Store.view``).
        self.store = store.view(f"{projections.NODES_DIR}/{node}")
        self.node = node
        self.root = root
        self.keyring_path = keyring
        self._consumer = consumer or (lambda: None)
        self._pid: int | None = None
        registry = kinds.Registry.builtin()
        self._secrets = registry.lookup("secrets")
        self._configs = registry.lookup("configs")
        self._ring: sealed.Keyring | None = None
        self._mounted = False
        self.log = log.bind(node=node)

    # --- what the task manager calls ---

    async def prepare(self, task: resource.Resource, spec: TaskSpec) -> TaskSpec:
        """``spec`` with its files written and listed in ``spec.files``; the same spec
        when the task asks for none. TaskRejectedError when one cannot be delivered."""
        try:
            files = wanted(spec.template)
        except tpl.TemplateError as exc:
            raise TaskRejectedError(str(exc)) from exc
        if not files:
            return spec
        key = f"task/{spec.namespace}/{spec.name}"
        contents = [await self._content(f, spec.namespace, key) for f in files]
        self._ensure_mounted()
        directory = self._here / spec.uid
        directory.mkdir(mode=0o700, exist_ok=True)
        out = []
        for f, data in zip(files, contents, strict=True):
            _write(directory / f.name, data, int(f.ref.uid), int(f.ref.gid), f.ref.mode)
            # The path as the driver's side (dockerd, the shim) sees it.
            out.append(TaskFile(str(self.root / spec.uid / f.name), f.ref.target))
        self.log.info("task files ready", key=key, files=len(out),
                      targets=[f.ref.target for f in files])
        return dataclasses.replace(spec, files=tuple(out))

    def remove(self, uid: str) -> None:
        """Drop a task's files (its workload is gone); nothing to drop is fine."""
        directory = self._here / uid
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
            self.log.info("task files removed", key=f"workload/{uid}")

    def sweep(self, keep: Iterable[str]) -> None:
        """Drop the files of every task uid not in ``keep`` (start-up clean-up)."""
        if not self._here.is_dir():
            return
        keeping = set(keep)
        for entry in self._here.iterdir():
            if entry.is_dir() and entry.name not in keeping:
                shutil.rmtree(entry, ignore_errors=True)
                self.log.info("stale task files removed", key=f"workload/{entry.name}")

    def close(self) -> None:
        """Unmount the tmpfs if no task has files on it any more."""
        pid = self._pid if self._pid is not None else self._consumer()
        if not tmpfs.is_tmpfs(self.root, pid or "self") or any(self._here.iterdir()):
            return
        try:
            tmpfs.unmount(self.root, pid)
        except OSError as exc:
            self.log.warning("cannot unmount the task files tmpfs", key=f"node/{self.node}",
                             path=str(self.root), error=str(exc))
            return
        with contextlib.suppress(OSError):
            # Busy while another mount namespace (an agent's copy) still holds it.
            tmpfs.seen_from(self.root, pid).rmdir()

    # --- reading what etcd holds ---

    async def _content(self, f: _Wanted, namespace: str, key: str) -> bytes:
        info = self._secrets if f.kind == "secret" else self._configs
        name = f.ref.source
        where = f'{f.kind} "{name}" in namespace "{namespace}"'
        try:
            obj = await self.store.get(info, name, namespace)
        except errors.CorruptObjectError as exc:
            raise TaskRejectedError(f"{where} cannot be read: {exc}") from None
        except errors.NotFoundError:
            raise CopyNotHereError(
                f"{where} has not been copied to node {self.node} yet (the distributor "
                "controller copies what a node's tasks mount); retrying") from None
        if obj.metadata.annotations.get(MISSING_ANNOTATION) == "true":
            self.log.info("task file missing", key=key, object=f"{f.kind}/{namespace}/{name}")
            raise TaskRejectedError(
                f"{where} not found: the task needs it at {f.ref.target}; create it "
                f"(swctl {f.kind} create {name} FILE) and the service's next task gets "
                "it")
        if f.kind == "config":
            data = obj.spec.get("data")
            if not isinstance(data, str):
                raise TaskRejectedError(f"{where} has no spec.data text")
            return data.encode()
        return self._open(obj, namespace, where)

    def _open(self, obj: resource.Resource, namespace: str, where: str) -> bytes:
        box = obj.spec.get("sealed")
        if not isinstance(box, Mapping):
            raise TaskRejectedError(
                f"{where} is not sealed (no spec.sealed): agents only deliver secrets "
                "stored encrypted; write it again with swctl (secret create, or apply), "
                "which seals it with the cluster's keyring")
        ring = self._keyring(where, str(box.get("key")))
        try:
            return ring.open(box, namespace, obj.name)
        except sealed.SealError as exc:
            raise TaskRejectedError(f"{exc} (agent on node {self.node})") from None

    def _keyring(self, where: str, key_id: str) -> sealed.Keyring:
        """The keyring, read again when it lacks the key a secret names (rotated since)."""
        if self.keyring_path is None:
            raise TaskRejectedError(
                f"{where} cannot be opened: the agent on node {self.node} has no keyring; "
                f"start it with --keyring PATH (or ${sealed.KEYRING_ENV}) naming the "
                "cluster's keyring.json")
        if self._ring is None or key_id not in self._ring.keys:
            try:
                self._ring = sealed.load(self.keyring_path)
            except sealed.SealError as exc:
                raise TaskRejectedError(f"{where} cannot be opened: {exc}") from None
        return self._ring

    # --- the tmpfs ---

    @property
    def _here(self) -> Path:
        """``root`` as this process opens it."""
        pid = self._pid if self._pid is not None else self._consumer()
        return tmpfs.seen_from(self.root, pid)

    def _ensure_mounted(self) -> None:
        if self._mounted and tmpfs.is_tmpfs(self.root, self._pid or "self"):
            return
        self._pid = self._consumer()  # dockerd may have been restarted since
        try:
            tmpfs.mount_tmpfs(self.root, self._pid)
        except tmpfs.TmpfsError as exc:
            # Never fall back to the disk: the task is not started without its tmpfs.
            raise TaskRejectedError(f"node {self.node} cannot hold task secrets: {exc}; the "
                                    "agent must run as root") from None
        self._mounted = True


def _write(path: Path, data: bytes, uid: int, gid: int, mode: int) -> None:
    """``data`` at ``path`` owned ``uid``:``gid`` with ``mode``, replaced whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)  # after chown, which may clear mode bits
    finally:
        os.close(fd)
    os.replace(tmp, path)
