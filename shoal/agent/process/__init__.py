"""The ``process`` executor driver: a task as a supervised process, for hosts without Docker.

Split by concern, like swarmkit's dockerexec: ``driver`` is the executor contract (start,
observe, stop, remove, adoption from the per-task files); ``shim`` is the per-task
supervisor, a standalone stdlib-only program the driver spawns; ``health`` runs the
health checks inside a task's namespaces; ``logs`` reads the shim's CRI log files.
"""
