"""The updater: rolling updates, rollback, revisions and rebalancing of a service's tasks.

See docs/updater.md for the contract. ``rebalance`` decides which running tasks to move
when the service's spread over its eligible nodes is uneven (pure, no I/O).
"""
