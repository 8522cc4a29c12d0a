"""structlog set-up for every Shoal process, and the per-reconcile log context.

One configuration everywhere: human-readable console lines on a terminal, one JSON
object per line otherwise (log shippers), level from ``SHOAL_LOG_LEVEL``. Context
variables are merged into every line, which is how each line logged while reconciling
— by the framework or by user code with any structlog logger — carries
``controller=<name>`` and ``key=<resource key>`` without anyone passing them along.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import structlog

from shoal.store import errors as store_errors

# (component, event) of the lines that told of a write refused for want of space since
# etcd last accepted writes.
_refusals_told: set[tuple[Any, Any]] = set()


def once_per_outage(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Keep the first line per call site that says a write was refused for want of space,
    drop the repeats until etcd accepts writes again (the store logs that).

    While etcd is out of space every controller and agent loop retries its writes with
    its own backoff, each logging its failure: a line per attempt and per object, for as
    long as the outage lasts. The store warns once when it starts and once when it ends
    (``shoal.store.etcd``); this keeps one line from each site in between, so a reader
    still sees which writes waited.
    """
    error = event_dict.get("error")
    if isinstance(error, str) and store_errors.NO_SPACE_MARK in error:
        site = (event_dict.get("component"), event_dict.get("event"))
        if site in _refusals_told:
            raise structlog.DropEvent
        _refusals_told.add(site)
        event_dict["repeats"] = "not logged until etcd accepts writes again"
    elif event_dict.get("event") == store_errors.SPACE_BACK_EVENT:
        _refusals_told.clear()
    return event_dict


def configure(level: str | None = None, json: bool | None = None,
              stream: TextIO | None = None) -> None:
    """Configure structlog (and the stdlib root logger, for gRPC and friends)."""
    level_name = (level or os.environ.get("SHOAL_LOG_LEVEL") or "info").upper()
    level_num = std_logging.getLevelName(level_name)
    if not isinstance(level_num, int):
        raise ValueError(f'invalid log level "{level_name}": use debug, info, warning or error')
    out = stream or sys.stderr
    if json is None:
        json = not out.isatty()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        once_per_outage,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if json:
        processors += [structlog.processors.dict_tracebacks,
                       structlog.processors.JSONRenderer()]
    else:
        # Plain tracebacks: rich's pretty ones take tens of milliseconds per exception on
        # the event loop (enough to starve lease keepalives when many reconciles fail)
        # and print local variables, which may hold secrets.
        processors.append(structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level_num),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    std_logging.basicConfig(level=max(level_num, std_logging.WARNING), stream=out)


def get_logger(name: str) -> Any:
    """A structlog logger that names its component (``component=...``) on every line.

    Returned lazily (not bound here), so module-level loggers pick up :func:`configure`
    even when it runs after the module was imported.
    """
    return structlog.get_logger(component=name)


@contextlib.contextmanager
def reconcile_context(controller: str, key: str) -> Iterator[None]:
    """Bind ``controller`` and ``key`` to every log line of the current task meanwhile."""
    with structlog.contextvars.bound_contextvars(controller=controller, key=key):
        yield


@contextlib.contextmanager
def runnable_context(name: str) -> Iterator[None]:
    """Bind a runnable's name as ``controller`` and ``key`` to every log line meanwhile.

    Its lines are about many objects: one that concerns a single object passes its own
    ``key=``, which wins over the bound one.
    """
    with structlog.contextvars.bound_contextvars(controller=name, key=name):
        yield
