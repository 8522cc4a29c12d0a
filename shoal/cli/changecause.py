"""The ``shoal.io/change-cause`` annotation: the command line that changed a service.

The updater records it in the revision a spec change creates, so ``swctl rollout
history`` can say which command made each revision (kubectl's CHANGE-CAUSE). It is the
line as typed, minus the global flags (``--etcd URL``, ``--prefix P``,
``--request-timeout S``, ``--keyring F``): where the cluster is says nothing about the
change, and an etcd URL may carry credentials. ``main`` stores it on the parsed arguments
(``args.command_line``) so every verb that writes a Service can set it. Pure.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence

from shoal.cli import common
from shoal.crds import resource
from shoal.crds import updatemeta as um

_GLOBAL_VALUE_FLAGS = common.GLOBAL_VALUE_FLAGS


def command_line(argv: Sequence[str]) -> str:
    """``swctl service update --image busybox:2 web`` from the arguments after swctl."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in _GLOBAL_VALUE_FLAGS:
            skip = True
            continue
        if arg.split("=", 1)[0] in _GLOBAL_VALUE_FLAGS:
            continue
        kept.append(arg)
    return shlex.join(["swctl", *kept])


def of(args: argparse.Namespace) -> str | None:
    """The change cause ``main`` recorded for this invocation (None when called some
    other way, e.g. a verb's function used directly)."""
    value = getattr(args, "command_line", None)
    return str(value) if value else None


def mark(obj: resource.Resource, cause: str | None) -> None:
    """Set the annotation on ``obj`` (in place); nothing when ``cause`` is None."""
    if cause:
        obj.metadata.annotations[um.CHANGE_CAUSE] = cause
