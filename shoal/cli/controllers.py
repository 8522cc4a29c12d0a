"""The built-in controllers the controller-manager runs.

One function, so that ``swctl controller-manager`` and ``swctl up`` agree on the list and
the issues that add controllers (orchestrator, scheduler, updater, ...) touch one place.
"""

from __future__ import annotations

from shoal.runtime import reconcile


def builtin_controllers() -> list[reconcile.ControllerSpec]:
    """Every built-in controller, in start-up order. Empty until the controllers land."""
    return []
