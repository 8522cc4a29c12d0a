"""What to type instead: the swctl way for docker verbs swctl does not have, and the
verb's own ``--help`` for unknown flags.

People arrive from Swarm tutorials typing ``docker node ps n1`` with ``swctl`` in front.
argparse would answer ``invalid choice: 'ps' (choose from ...)``, which says what is
wrong but not what to do; here the command line is looked at *before* argparse runs,
against the parser's own table of verbs (so a verb added later is never shadowed by a
hint: ``service create|update|rm|inspect|logs`` and ``stack`` are verbs now), and an
unknown verb becomes ``unknown command "node ps": use swctl node inspect --pretty n1
(see swctl node --help)``. Kept apart from main.py so the table of docker verbs is one place to read
and unit-test.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from shoal.cli import common

_VALUE_FLAGS = common.GLOBAL_VALUE_FLAGS

def _arg(rest: list[str], placeholder: str) -> str:
    """The name the user gave: docker puts it last (``service update --image x web``),
    after the flags; else a placeholder."""
    for item in reversed(rest):
        if not item.startswith("-"):
            return item
    return placeholder


# (verb, sub-verb) -> (swctl command to use, the verb whose --help to read). The command
# may use {name}: the first name the user typed after the verb.
_DOCKER_VERBS: dict[tuple[str, str], tuple[str, str]] = {
    # service create/update/inspect/rm/logs/ps/ls/scale/rollback are swctl verbs
    # (serviceverbs.py), and so are secret and config create/ls/inspect/rm (secretverbs.py)
    # and the stack verbs (stack.py).
    ("node", "ps"): ("swctl node inspect --pretty {name}", "node"),
    ("network", "connect"): ("swctl apply -f FILE with the service's networks list",
                             "apply"),
    ("network", "disconnect"): ("swctl apply -f FILE with the service's networks list",
                                "apply"),
}
# Docker's one-word verbs.
_DOCKER_TOP: dict[str, tuple[str, str]] = {
    "rm": ("swctl delete KIND/NAME (or swctl service rm NAME)", "delete"),
    "remove": ("swctl delete KIND/NAME (or swctl service rm NAME)", "delete"),
    "create": ("swctl apply -f FILE (or swctl service create IMAGE)", "apply"),
    "inspect": ("swctl describe KIND NAME (or swctl service inspect NAME)", "describe"),
    "ps": ("swctl service ps NAME (or swctl get tasks)", "service"),
    "ls": ("swctl get KIND (e.g. swctl get services)", "get"),
    "list": ("swctl get KIND (e.g. swctl get services)", "get"),
    "update": ("swctl apply -f FILE (or swctl service update NAME)", "apply"),
    "swarm": ("swctl up to start a local cluster, swctl agent to join a node", "up"),
}
_SERVICE_ALIASES = {"svc": "service"}


def _positionals(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(verb words, what follows): the first two positional words, global flags skipped."""
    words: list[str] = []
    i = 0
    while i < len(argv) and len(words) < 2:
        arg = argv[i]
        if arg in _VALUE_FLAGS:
            i += 2
            continue
        if arg.startswith("-"):
            if words:
                break  # a flag of the verb: no sub-verb given
            i += 1
            continue
        words.append(arg)
        i += 1
    return words, list(argv[i:])


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps the subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def unknown_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str | None:
    """The message for a verb ``parser`` does not know, with the swctl way; None when the
    verb (and sub-verb, for verbs that have them) exists."""
    words, rest = _positionals(argv)
    if not words:
        return None
    verbs = _subcommands(parser)
    top = words[0]
    if top not in verbs:
        if len(words) == 2 and (top, words[1]) in _DOCKER_VERBS:
            return _message(f"{top} {words[1]}", _DOCKER_VERBS[(top, words[1])], rest)
        if top in _DOCKER_TOP:
            return _message(top, _DOCKER_TOP[top], words[1:] + rest)
        return f'unknown command "{top}" (see swctl --help for the verbs)'
    subs = _subcommands(verbs[top])
    if not subs or len(words) < 2 or words[1] in subs:
        return None
    key = (_SERVICE_ALIASES.get(top, top), words[1])
    if key in _DOCKER_VERBS:
        return _message(f"{top} {words[1]}", _DOCKER_VERBS[key], rest)
    known = ", ".join(sorted(subs))
    return (f'unknown command "{top} {words[1]}": swctl {top} has {known} (see swctl '
            f"{top} --help)")


def _message(typed: str, entry: tuple[str, str], rest: list[str]) -> str:
    use, verb = entry
    return (f'unknown command "{typed}": use {use.format(name=_arg(rest, "NAME"))} '
            f"(see swctl {verb} --help)")


# Docker flags people type on verbs that spell them differently here.
_DOCKER_FLAGS: dict[str, str] = {
    "--format": "use -o json|yaml|wide|name",
    "--filter": "use -l SELECTOR for labels (node ls has --filter)",
    "--detach": "use -d on apply, scale and service create|update",
    "--publish": "use swctl service update --publish-add P:T NAME, or spec.endpoint.ports",
    "-p": "use swctl service update --publish-add P:T NAME, or spec.endpoint.ports",
    "--replicas": "use swctl scale service/NAME --replicas N",
    # stack deploy's: nodes pull nothing through the CLI here, so there is nothing to pass.
    "--with-registry-auth": "Shoal's nodes use their own registry credentials; leave it out",
    "--resolve-image": "Shoal never resolves image digests at deploy; leave it out",
}


def unknown_flags(args: argparse.Namespace, extras: Sequence[str]) -> str:
    """The message for flags the verb does not know, naming the verb's own --help."""
    words = [str(args.verb)]
    sub = getattr(args, f"{args.verb}_verb", None) or (
        getattr(args, "service_verb", None) if args.verb == "svc" else None)
    if sub:
        words.append(str(sub))
    command = "swctl " + " ".join(words)
    flags = [e for e in extras if e.startswith("-")] or list(extras)
    first = flags[0].split("=", 1)[0]
    what = (f"unknown flag {first}" if first.startswith("-")
            else f"unexpected argument {first}")
    tip = f": {_DOCKER_FLAGS[first]}" if first in _DOCKER_FLAGS else ""
    if first == "--format" and not hasattr(args, "output"):
        tip = ""  # this verb has one output shape
    return f"{what} for {command}{tip} (see {command} --help)"
