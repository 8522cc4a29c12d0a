"""The cluster keyring as ``swctl`` finds it: ``--keyring``, else ``$SHOAL_KEYRING``, else
the one ``swctl up`` made in its state directory (``common.GlobalOptions.keyring``).

Loaded lazily and once per command (:class:`Source`): most verbs never touch a Secret
value and must work on a machine without the keyring; the ones that do (apply of a
Secret, ``secret create|update``, ``--show-values``, ``secret rotate-key``) fail with
the path they looked at and the three ways to point at another.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shoal.cli import common, errors
from shoal.crds import sealed


class Source:
    """The keyring at ``path``, read the first time it is needed."""

    def __init__(self, path: Path | None) -> None:
        self.path = path or common.keyring_path(None)
        self._ring: sealed.Keyring | None = None

    @classmethod
    def of(cls, opts: common.GlobalOptions) -> Source:
        return cls(opts.keyring)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Source:
        """For code that has the parsed flags but not the options made from them."""
        return cls(common.keyring_path(getattr(args, "keyring", None)))

    def get(self) -> sealed.Keyring:
        if self._ring is None:
            try:
                self._ring = sealed.load(self.path)
            except sealed.SealError as exc:
                raise errors.CliError(str(exc)) from None
        return self._ring

    def reload(self) -> sealed.Keyring:
        self._ring = None
        return self.get()


def cannot_open(exc: sealed.SealError, source: Source) -> errors.CliError:
    """A value that does not open under the keyring: say which keyring was used."""
    return errors.CliError(f"{exc} (keyring {source.path}; pass --keyring or set "
                           f"{sealed.KEYRING_ENV} to the cluster's keyring)")
