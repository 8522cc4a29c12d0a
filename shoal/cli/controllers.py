"""The built-in controllers the controller-manager runs.

One function, so that ``swctl controller-manager`` and ``swctl up`` agree on the list.
The list itself belongs to the controllers package (``shoal.controllers.builtin``), which
knows its controllers and their order; this module only imports it, lazily, so verbs
that never run controllers do not pay for importing them.
"""

from __future__ import annotations

import importlib

from shoal.runtime import reconcile

BUILTIN_MODULE = "shoal.controllers.builtin"


def builtin_controllers() -> list[reconcile.ControllerSpec]:
    """Every built-in controller, in start-up order (``controller_specs()`` of
    ``shoal.controllers.builtin``); empty in an installation without that module."""
    try:
        module = importlib.import_module(BUILTIN_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != BUILTIN_MODULE:
            raise  # the module exists but something it imports is missing: a real error
        return []
    specs: list[reconcile.ControllerSpec] = list(module.controller_specs())
    return specs
