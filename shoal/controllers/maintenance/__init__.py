"""etcd maintenance: out of the NOSPACE alarm by compaction and defragmentation
(see ``controller.py``)."""

from shoal.controllers.maintenance.controller import controller_spec

__all__ = ["controller_spec"]
