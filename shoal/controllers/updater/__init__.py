"""The updater: rolling updates of a changed Service spec, rollbacks and revisions.

``config`` reads updateConfig/rollbackConfig, ``batches`` decides each pass (pure),
``revisions`` keeps the history (pure), ``controller`` is the loop that writes. See
docs/updater.md for the contract.
"""
