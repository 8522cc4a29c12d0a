"""Compose files to Shoal objects: what ``docker stack deploy`` reads, made pure.

This package owns the compose v3 format as Docker 20.10's ``stack deploy`` reads it
(``loader``: versions, interpolation, ``env_file``, merging several files, what is ignored
and what is refused) and its conversion to the Service, Network, Secret and Config
manifests ``swctl apply`` takes (``convert``). It does no I/O beyond reading the files it is
given and never talks to etcd, so ``stack deploy`` and ``stack convert`` share one
conversion, and a corpus of Docker's own output can hold it to account in a fast test.
"""

from shoal.compose.convert import convert_stack
from shoal.compose.errors import ComposeError
from shoal.compose.loader import ComposeProject, load_project

__all__ = ["ComposeError", "ComposeProject", "convert_stack", "load_project"]
