"""The node report: what the agent says about each node it serves, for the fold to apply.

What it owns: the key ``<p>/reports/<node>/status`` of every node of the process,
holding ``{role, labels, status}`` -- the role and labels the agent was started with and
the status fields only the agent knows (address, platform, resources, runtime, its log
endpoint, its dataplane backend, the ``Firewall`` condition). The fold controller
(``shoal.controllers.fold``) creates the Node from the first report and later copies the
labels and these fields into it; ``status.state`` (ready/down) is the nodes
controller's, from the heartbeat. A worker's etcd user may write its reports and no
Node (docs/security.md).

Why it is built so: one writer per process, like the task reports, so a thousand hollow
nodes registering at once cost eight transactions, not a thousand. A report is rewritten
whole whenever a field changes (a few times per agent run), and written again, with what
was last set, after etcd comes back -- puts that cannot conflict, on keys only this agent
writes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from shoal.crds import resource
from shoal.store import client, errors, etcd, projections

log = structlog.get_logger("shoal.agent.nodereport")

BATCH = 127  # reports per transaction
RETRY_AFTER = 0.5  # seconds before a failed write is tried again


class NodeReports:
    """The node reports of every node one agent process serves."""

    def __init__(self, store: client.Store) -> None:
        self.store = store
        self._reports: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self.writes = 0

    def publish(self, name: str, role: str, labels: dict[str, str],
                status: dict[str, Any]) -> None:
        """A node's report as the agent starts: everything the agent knows of it now."""
        old = self._reports.get(name, {}).get("status", {})
        kept = [c for c in old.get("conditions", []) if isinstance(c, dict)]
        self._reports[name] = {"role": role, "labels": dict(labels),
                               "status": {**status, **({"conditions": kept} if kept else {})}}
        self._mark(name)

    def set_fields(self, name: str, **fields: Any) -> None:
        """Status fields learnt later (the dataplane backend); written if they changed."""
        status = self._reports.setdefault(name, {"status": {}})["status"]
        if all(status.get(k) == v for k, v in fields.items()):
            return
        status.update(fields)
        self._mark(name)

    def set_condition(self, name: str, type_: str, ok: bool, reason: str,
                      message: str) -> None:
        """An agent-owned condition (``Firewall``); written if it changed."""
        status = self._reports.setdefault(name, {"status": {}})["status"]
        conds: list[dict[str, Any]] = status.setdefault("conditions", [])
        value = "True" if ok else "False"
        for cond in conds:
            if cond.get("type") == type_:
                if (cond.get("status"), cond.get("reason"), cond.get("message")) == (
                        value, reason, message):
                    return
                if cond.get("status") != value:
                    cond["lastTransitionTime"] = resource.now_rfc3339()
                cond.update(status=value, reason=reason, message=message)
                break
        else:
            conds.append({"type": type_, "status": value, "reason": reason,
                          "message": message, "lastTransitionTime": resource.now_rfc3339()})
        self._mark(name)

    def _mark(self, name: str) -> None:
        self._dirty.add(name)
        self._wake.set()

    async def flush(self) -> None:
        """Write every changed report now; retries while etcd is unreachable."""
        backoff = 0.1
        while self._dirty:
            names, self._dirty = sorted(self._dirty), set()
            try:
                for i in range(0, len(names), BATCH):
                    chunk = names[i:i + BATCH]
                    await self.store.etcd.txn([], [etcd.op_put(
                        projections.node_report_key(self.store.prefix, n),
                        projections.encode_node_report(self._reports[n])) for n in chunk])
                    self.writes += len(chunk)
            except errors.UnavailableError as exc:
                self._dirty.update(names)  # written again whole: puts are idempotent
                log.warning("node report failed, retrying", node=names[0], nodes=len(names),
                            error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def run(self) -> None:
        """Write reports as they change, until cancelled."""
        while True:
            self._wake.clear()
            if not self._dirty:
                await self._wake.wait()
            await asyncio.sleep(0.05)  # a burst of changes: one write
            await self.flush()
