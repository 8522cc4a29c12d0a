"""What an executor driver is: the contract, what real drivers share, the hollow driver.

``executor`` is the contract the task manager drives (:class:`~.executor.Executor`);
``workload`` is how a task template reads for the real drivers, so docker and process
agree on what a manifest means; ``hollow`` is the driver without a runtime, the
reference implementation of the contract and the one scale work runs.

Laid out like swarmkit's ``agent/exec``: the contract and its helpers in one package,
each real driver in its own package beside it (``shoal.agent.docker``,
``shoal.agent.process``) importing this one and never each other. The hollow driver
lives here rather than in a package of its own because it is one module with no
dependency beyond the contract, and every agent imports it (it is the default).
"""
