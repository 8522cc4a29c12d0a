"""Which runtime runs a real node's tasks: the one choice ``swctl up`` and ``swctl agent`` share.

``auto`` (the default of both) is ``docker`` when a dockerd answers or can be started
(:func:`shoal.agent.docker.dockerd.ensure_dockerd`), else ``process``, with the reason in
:attr:`Choice.fallback` so the caller can say why. ``docker`` that cannot be honoured is
an error, never a quiet fallback; ``process`` is taken as asked. The simulated ``hollow``
runtime is never chosen here: a node whose tasks show Running while nothing runs must be
asked for by name (``--runtime hollow``), so it is not a choice this function makes.

Kept apart from :mod:`shoal.agent.agent` so the CLI can make the choice (with its
spinner) without loading the agent, and the docker package is imported only when asked.
"""

from __future__ import annotations

import dataclasses

AUTO = "auto"
REAL_RUNTIMES = ("docker", "process")
CHOICES = (AUTO, *REAL_RUNTIMES)


class RuntimeUnavailable(Exception):
    """An explicitly requested runtime cannot run here; the message says why."""


@dataclasses.dataclass(frozen=True)
class Choice:
    runtime: str  # docker or process
    docker_url: str | None = None  # where dockerd answered, for docker
    fallback: str = ""  # why auto fell back to process ("" when it did not)


def choose(wanted: str = AUTO) -> Choice:
    """The runtime for ``wanted`` (auto, docker or process); see the module docstring."""
    if wanted == "process":
        return Choice("process")
    if wanted not in (AUTO, "docker"):
        raise RuntimeUnavailable(f'unknown runtime "{wanted}": expected one of '
                                 f'{", ".join(CHOICES)}')
    try:
        from shoal.agent.docker import dockerd
    except ImportError as exc:
        if wanted == "docker":
            raise RuntimeUnavailable(f"--runtime docker: the docker driver is not "
                                     f"available ({exc})") from None
        return Choice("process", fallback=f"the docker driver is not available ({exc})")
    try:
        url = dockerd.ensure_dockerd()
    except dockerd.DockerdError as exc:
        if wanted == "docker":
            raise RuntimeUnavailable(f"--runtime docker: {exc}") from None
        return Choice("process", fallback=f"no dockerd ({str(exc).splitlines()[0]})")
    return Choice("docker", docker_url=url)
