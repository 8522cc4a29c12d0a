"""The node agent: registration, heartbeat lease, executor drivers, task manager.

One agent runs per node. It watches only the tasks assigned to its node, drives each
through its states with an executor driver, and is the only writer of ``status.state``
of those tasks.
"""
