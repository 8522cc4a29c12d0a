"""Is a decoded document one later steps can walk: not too deep, too big or circular?

Every later step (admission, the compose converter, JSON encoding) walks documents
recursively, and YAML lets a few lines say a great deal: ``[[[[...]]]]`` nests thousands
of levels (a RecursionError), nine aliases of aliases of ... expand to millions of values
(minutes of work and gigabytes, though the file is 300 bytes), and ``&a [*a]`` is a list
that contains itself (endless). Readers of user files check each document here first and
refuse it with a message naming the file. The check itself is iterative and visits a
node shared through aliases once, so it is linear in what the parser built.

No real manifest or compose file comes near the limits: a Service nests about 8 levels,
and a List of 10,000 of them holds a few hundred thousand values.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 64
"""Levels of maps and lists a document may nest."""

MAX_VALUES = 2_000_000
"""Values (maps, lists and scalars, aliases counted as often as they are used) in one."""

TOO_DEEP = (f"nested more than {MAX_DEPTH} levels of maps and lists deep; no manifest or "
            "compose file needs that many: check for a runaway [[[ or {{{")
TOO_BIG = (f"expands to more than {MAX_VALUES:,} values (YAML aliases of aliases?); split "
           "it, or write out what the aliases stand for")
CIRCULAR = "contains itself (a YAML alias used inside its own anchor); write it out instead"


def problem(value: Any) -> str | None:
    """Why ``value`` cannot be taken (one of the messages above), or None."""
    memo: dict[int, tuple[int, int]] = {}  # id -> (height, expanded size)
    open_: set[int] = set()  # the containers on the path being walked
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, finished = stack.pop()
        if not isinstance(node, dict | list):
            continue
        children = list(node.values()) if isinstance(node, dict) else node
        if not finished:
            if id(node) in memo:
                continue
            if id(node) in open_:
                return CIRCULAR
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children if isinstance(c, dict | list))
            continue
        open_.discard(id(node))
        height, size = 1, 1
        for child in children:
            if isinstance(child, dict | list):
                child_height, child_size = memo[id(child)]
                height = max(height, child_height + 1)
                size += child_size
            else:
                size += 1
        if height > MAX_DEPTH:
            return TOO_DEEP
        if size > MAX_VALUES:
            return TOO_BIG
        memo[id(node)] = (height, size)
    return None
