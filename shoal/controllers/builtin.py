"""The built-in controllers, as the controller-manager runs them.

``controller_specs()`` returns a fresh set each call: every controller keeps per-process
state (caches, indexes, the scheduler's cluster view), so two managers in one process —
tests do that — must not share instances. Each spec is leader-elected on its own, so
several controller-managers can run; for each controller one of them leads.

* ``orchestrator`` — Services -> Tasks (slots, global, restarts, history, deletion): a
  per-object controller (``reconcile.ControllerSpec``);
* ``updater`` — rolls changed Service specs out over their tasks, rollbacks,
  revisions (``status.update``): a per-object controller too;
* ``scheduler`` — pending Tasks -> nodes, in batches: an elected runnable
  (``runnable.RunnableSpec``), as are
* ``nodes`` — Node ``ready``/``down`` from heartbeat leases,
* ``fold`` — the status nodes report for their tasks (``<p>/reports/<node>/``)
  copied into Task.status (agents cannot write Tasks),
* ``distributor`` — each node's copies of the Secrets and Configs its tasks mount
  (``<p>/nodes/<node>/secrets|configs/``: a node reads no Secret or Config object), and
* ``allocator`` — subnets, VNIs, task/node addresses, VIPs, published ports;
* ``rotation`` — a Secret or Config updated bumps ``forceUpdate`` of the services that
  mount it, once (``shoal.io/mounted-digests``): per-object, like the orchestrator;
* ``validity-networks|secrets|configs`` — ``Valid=False`` with admission's messages on
  an object of those kinds stored in a form admission refuses (written straight into
  etcd), ``Valid=True`` once fixed: per-object;
* ``unreadable`` — a Warning ``Unreadable`` Event for each value in etcd that no list or
  watch can read (not an object, or not the object its key names): an elected runnable;
* ``etcd-maintenance`` — etcd out of space (its NOSPACE alarm): compact, defragment,
  disarm, and the Events saying so; unelected, in every manager (etcd cannot elect
  anyone while it refuses writes).
"""

from __future__ import annotations

from shoal.controllers import unreadable, validity
from shoal.controllers.allocator import controller as allocator
from shoal.controllers.distributor import controller as distributor
from shoal.controllers.fold import controller as fold
from shoal.controllers.maintenance import controller as maintenance
from shoal.controllers.nodes import controller as nodes
from shoal.controllers.orchestrator import controller as orchestrator
from shoal.controllers.rotation import controller as rotation
from shoal.controllers.scheduler import controller as scheduler
from shoal.controllers.updater import controller as updater
from shoal.runtime.manager import Spec


def controller_specs() -> list[Spec]:
    """Every built-in controller, in start-up order."""
    return [nodes.controller_spec(), fold.controller_spec(), orchestrator.controller_spec(),
            updater.controller_spec(), scheduler.controller_spec(),
            allocator.controller_spec(), rotation.controller_spec(),
            distributor.controller_spec(), *validity.controller_specs(),
            unreadable.controller_spec(), maintenance.controller_spec()]
