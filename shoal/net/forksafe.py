"""Make pyroute2's namespace helpers safe inside a process that handles signals.

To open a socket in another network namespace (``AsyncIPRoute(netns=...)``,
``pyroute2.netns.create_socket``) pyroute2 forks a child, takes the socket from it and
then stops it with SIGTERM. The forked child inherits the parent's signal set-up: in an
asyncio program with ``loop.add_signal_handler(SIGTERM, ...)`` that is a C handler which
writes the signal number to the loop's wakeup socket -- the very socket the parent
reads. A child still alive when its SIGTERM arrives therefore delivers SIGTERM to the
parent. Seen: every agent stopped itself, cleanly, when plumbing its first task.
pyroute2's ``disable_mp_signal`` makes the child reset SIGTERM to the default action
first thing, so the signal only ends the child. Imported by the package itself
(``shoal/net/__init__.py``), so no module of ``shoal.net`` can open a namespace socket
without it.
"""

from __future__ import annotations

import pyroute2.config

pyroute2.config.disable_mp_signal = True
