"""The operator framework: informers, work queue, reconcile, leader election, helpers.

Dependencies point down only: this package uses ``shoal.crds`` and ``shoal.store`` and
is used by controllers, the agent, networking and the CLI. The names below are the
ones an operator author needs; everything else is reachable through its module::

    from shoal.runtime import on, operator

    @on.reconcile("greetings")
    async def greet(obj, ctx):
        return {"message": f"Hello, {obj.spec['name']}!"}

    if __name__ == "__main__":
        operator.main()
"""

from shoal.crds.resource import Resource
from shoal.runtime import operator
from shoal.runtime.decorators import OperatorRegistry, default_registry, on
from shoal.runtime.reconcile import Context, ControllerSpec, Result
from shoal.runtime.runnable import RunContext, RunnableSpec

__all__ = ["Context", "ControllerSpec", "OperatorRegistry", "Resource", "Result",
           "RunContext", "RunnableSpec", "default_registry", "on", "operator"]
