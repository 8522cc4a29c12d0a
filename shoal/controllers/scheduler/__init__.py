"""The scheduler's decision logic: filters, spread preferences, node ordering.

``schedule`` places a batch of pending tasks; the controller loop that feeds it from the
informers and commits its assignments in etcd transactions lives beside it later. See
docs/scheduler.md for the design.
"""

from shoal.controllers.scheduler.filters import Demand, NodeInfo, explain
from shoal.controllers.scheduler.placement import ClusterState, ScheduleResult, schedule

__all__ = ["ClusterState", "Demand", "NodeInfo", "ScheduleResult", "explain", "schedule"]
