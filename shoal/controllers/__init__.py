"""Built-in controllers: one independent, leader-elected loop per concern.

The orchestrator reconciles object by object (a runtime controller); the scheduler, nodes
and allocator are elected runnables (``shoal.runtime.runnable``): each follows the whole
cluster while its process holds that loop's lease. ``builtin.py`` lists them in start-up
order; the import-linter contracts in pyproject.toml keep the loop packages independent
of each other, sharing only ``common.py`` and ``nodefacts.py``.

Each controller keeps its decision logic in pure, synchronous functions over
``shoal.crds.resource.Resource`` objects (no I/O, no clock) so that the logic can be
tested exhaustively and benchmarked in memory; the loop that feeds those functions from
informers and commits their results in etcd transactions is a thin layer on top.
"""
