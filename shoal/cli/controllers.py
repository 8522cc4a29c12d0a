"""The built-in controllers the controller-manager runs.

One function, so that ``swctl controller-manager`` and ``swctl up`` agree on the list.
The list itself belongs to the controllers package (``shoal.controllers.builtin``), which
knows its controllers and their order; this module only imports it.

The import sits inside the function, a plain import rather than the ``importlib`` lookup
this once was: verbs that never run controllers (``get``, ``apply``, ``agent``) then
never load the controllers and their dependencies, and mypy and the layering contracts
still see the dependency. There is no cycle to avoid (``shoal.controllers`` never
imports ``shoal.cli``), only start-up cost.
"""

from __future__ import annotations

from shoal.runtime import manager


def builtin_controllers() -> list[manager.Spec]:
    """Every built-in controller and elected runnable, in start-up order (``controller_specs()`` of
    ``shoal.controllers.builtin``)."""
    from shoal.controllers import builtin

    return list(builtin.controller_specs())
