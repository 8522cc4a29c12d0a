"""``swctl agent``: hand the command line to the node agent, untouched.

The agent owns its flags (``shoal.agent.main`` parses them, so ``python -m
shoal.agent.main`` and ``swctl agent`` are the same program); swctl only finds the verb,
turns swctl's global ``--etcd``/``--prefix`` given *before* the verb into the agent's own
flags, and calls ``shoal.agent.main.main(argv)``. This is done before argparse sees the
command line (see ``main.main``), because argparse would try to parse the agent's flags.
The agent is imported only here and only when asked for, by a plain import inside
:func:`run` (not at module level, and no longer through ``importlib``): every other verb
starts without loading the agent and its drivers, and a missing dependency of the agent
fails with a message naming it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from shoal.cli import common, errors

VERB = "agent"
# The agent understands all of swctl's global flags but --request-timeout.
_GLOBAL_WITH_VALUE = common.GLOBAL_VALUE_FLAGS
_PASSED_ON = tuple(f for f in _GLOBAL_WITH_VALUE if f != "--request-timeout")


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    # Listed for `swctl --help` only: `main` dispatches `agent` before argparse runs.
    sub.add_parser(VERB, add_help=False, help="run the node agent (see `swctl agent --help`)")


def split_agent_argv(argv: Sequence[str]) -> list[str] | None:
    """The agent's argv when ``argv`` is ``[GLOBAL FLAGS...] agent ARGS...``, else None.

    Global ``--etcd``/``--prefix`` before the verb are passed on (after them, the agent
    parses its own); ``--request-timeout`` means nothing to the agent and is dropped.
    """
    passed: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == VERB:
            return [*passed, *argv[i + 1:]]
        flag, eq, value = arg.partition("=")
        if flag not in _GLOBAL_WITH_VALUE:
            return None  # another verb, or a flag swctl's own parser must handle
        if not eq:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            i += 1
        if flag in _PASSED_ON:
            passed += [flag, value]
        i += 1
    return None


def run(argv: list[str]) -> int:
    try:
        from shoal.agent import main as agent_main
    except ModuleNotFoundError as exc:
        if exc.name not in ("shoal.agent", "shoal.agent.main"):
            # A dependency of the agent is missing: name it, not "no agent".
            raise errors.CliError(f"the node agent cannot start: the Python module "
                                  f"{exc.name} is missing (pip install shoal again to pull "
                                  "in its dependencies)") from None
        raise errors.CliError("the node agent is not part of this installation "
                              "(shoal.agent.main is missing); reinstall shoal") from None
    return int(agent_main.main(argv) or 0)
