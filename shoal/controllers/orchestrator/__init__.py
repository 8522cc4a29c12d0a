"""The orchestrator's decision logic: slots, global placement by node, restart policy.

``plan_service`` turns a service and its tasks (and the nodes) into a ``Plan`` of tasks
to create, shut down and delete; the controller loop applies plans in etcd transactions.
See docs/orchestrator.md for the design.
"""

from shoal.controllers.orchestrator.restart import (
    Action,
    Decision,
    RestartPolicy,
    decide,
    decide_slot,
)
from shoal.controllers.orchestrator.slots import (
    Create,
    Plan,
    Shutdown,
    plan_global,
    plan_replicated,
    plan_service,
)

__all__ = ["Action", "Create", "Decision", "Plan", "RestartPolicy", "Shutdown", "decide",
           "decide_slot", "plan_global", "plan_replicated", "plan_service"]
