"""The one place where failures become an exit code and ``error: ...`` lines on stderr.

Verbs raise; they never print errors or call ``sys.exit`` themselves. That keeps every
message in the same shape (``error: what, where; how to fix``) and lets ``diff`` use its
own exit code (2, kubectl's "diff failed") for every error without special cases.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

import yaml

from shoal.crds import admission, kinds
from shoal.store import errors as store_errors
from shoal.store import etcd_server


class CliError(Exception):
    """A failure whose message is already fit for the user; may span several lines.

    ``lines`` are printed one ``error: `` line each (validation reports every invalid
    document at once), except indented lines, which continue the line before them;
    ``code`` overrides the verb's error exit code when set.
    """

    def __init__(self, message: str | Sequence[str], code: int | None = None) -> None:
        self.lines = [message] if isinstance(message, str) else list(message)
        self.code = code
        super().__init__("\n".join(self.lines))


class ManifestError(CliError):
    """A manifest that cannot be read or parsed (missing file, YAML syntax, not a map)."""


def messages_for(exc: BaseException) -> list[str] | None:
    """The user-facing lines for an expected failure, or None for a bug."""
    if isinstance(exc, CliError):
        return exc.lines
    if isinstance(exc, admission.ValidationError):
        return [line for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, kinds.UnknownKindError):
        return [str(exc)]
    if isinstance(exc, store_errors.StoreError):
        # UnavailableError already says which URL and how to start etcd; NotFound,
        # AlreadyExists and Conflict name the object.
        return [str(exc)]
    if isinstance(exc, etcd_server.EtcdNotInstalledError):
        return [str(exc)]
    if isinstance(exc, yaml.YAMLError):
        return [f"invalid YAML: {exc}"]
    if isinstance(exc, OSError) and exc.filename is not None:
        return [f"{exc.strerror or exc}: {exc.filename}"]
    return None


def report(exc: BaseException, error_code: int = 1) -> int:
    """Print ``exc`` the way swctl reports errors and return the exit code to use."""
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, BrokenPipeError):
        # `swctl get ... | head`: the reader is gone, which is not an error of ours.
        # Point stdout at devnull so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    code = error_code
    if isinstance(exc, CliError) and exc.code is not None:
        code = exc.code
    for line in error_lines(exc):
        sys.stderr.write(line)
        sys.stderr.write("\n")
    sys.stderr.flush()
    return code


def error_lines(exc: BaseException) -> list[str]:
    """The lines swctl prints on stderr for ``exc`` (``error: ...``), as :func:`report`
    prints them; the dashboard shows the very same lines for a failed action."""
    lines = messages_for(exc)
    if lines is None:
        if os.environ.get("SHOAL_DEBUG"):
            traceback.print_exception(exc)
        lines = [f"internal error: {type(exc).__name__}: {exc} "
                 "(set SHOAL_DEBUG=1 for a traceback, and please report it)"]
    # Indented lines continue the previous message (a quoted source line, a hint).
    return [line if line.startswith(("error: ", " ")) else f"error: {line}"
            for line in lines]
