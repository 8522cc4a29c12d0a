"""The updater: rolling updates of a changed Service spec, rollbacks, revisions and
rebalancing.

``config`` reads updateConfig/rollbackConfig, ``batches`` decides each pass (pure),
``revisions`` keeps the history (pure), ``rebalance`` decides which running tasks to
move when a service's spread over its nodes is uneven (pure) and ``moves`` is its part
of a pass (pure), ``controller`` is the loop that writes. See docs/updater.md for the
contract.
"""
