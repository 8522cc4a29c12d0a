"""The nodes controller: node health from heartbeat leases (see ``controller.py``)."""

from shoal.controllers.nodes.controller import NodesController, controller_spec

__all__ = ["NodesController", "controller_spec"]
