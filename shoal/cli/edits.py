"""One compare-and-swap edit of a stored object, as the imperative verbs make it.

``rollout pause|resume|restart``, ``rollback`` and ``service rebalance`` each change a
field or an annotation of a Service someone else may be writing at the same moment
(the controllers write its status; a user may apply). Each re-reads and redoes its
edit on a conflict, and a user gets the same two errors from all of them: the object
is gone, or it kept changing. An edit may raise a ``CliError`` to refuse the object as
it now is; nothing is written then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from shoal.cli import errors, get
from shoal.crds import kinds, resource
from shoal.runtime import cas
from shoal.store import client
from shoal.store import errors as store_errors

#: Re-reads before giving up on an object that keeps changing under the edit.
CONFLICT_ATTEMPTS: Final = 8


async def edit(store: client.Store, info: kinds.KindInfo, obj: resource.Resource,
               change: Callable[[resource.Resource], None], what: str) -> resource.Resource:
    """Apply ``change`` to the stored ``obj`` with compare-and-swap; the stored result.
    ``what``: the edit in words, for the error (``changing web``)."""
    try:
        stored = await cas.mutate(store, info, obj, change, attempts=CONFLICT_ATTEMPTS,
                                  backoff=0.01)
    except store_errors.ConflictError:
        raise errors.CliError(f"gave up {what} after {CONFLICT_ATTEMPTS} conflicting "
                              "writes: something keeps changing it; try again") from None
    if stored is None:
        raise get.not_found(info, obj.name, obj.namespace)
    return stored
