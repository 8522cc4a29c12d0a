"""What a problem found in a manifest is, and how messages show the values involved.

Every admission pass (the OpenAPI subset in ``openapi``, the per-kind checks in
``semantics``, the envelope in ``admission``) reports ``FieldError``s and words them with
the helpers here, so a message reads the same whichever pass found the problem: the field
path first, then what is wrong, then what to write instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
from collections.abc import Iterable
from typing import Any


@dataclasses.dataclass(frozen=True)
class FieldError:
    """One problem at one field path, e.g. ``spec.replicas: must be >= 0, got -1``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def describe(value: Any) -> str:
    """A value as messages show it: ``integer 5``, ``string "x"``, ``null``, ``an object``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {json.dumps(value)}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value:g}"
    if isinstance(value, str):
        return f"string {quote(value)}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def quote(text: str, limit: int = 60) -> str:
    shown = text if len(text) <= limit else text[: limit - 3] + "..."
    return json.dumps(shown, ensure_ascii=False)


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` was most likely meant to be, if any is close enough."""
    options = [c for c in candidates if isinstance(c, str)]
    squashed = {re.sub(r"[-_]", "", c.lower()): c for c in options}
    exact = squashed.get(re.sub(r"[-_]", "", word.lower()))
    if exact is not None:  # restart_policy, RestartPolicy -> restartPolicy
        return exact
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return close[0] if close else None


_SIMPLE_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@functools.lru_cache(maxsize=4096)  # the same few hundred paths recur on every object
def child(path: str, key: str) -> str:
    """``spec`` + ``replicas`` -> ``spec.replicas``; odd keys go in brackets, quoted."""
    if not _SIMPLE_KEY_RE.match(key):
        return f"{path}[{json.dumps(key, ensure_ascii=False)}]"
    return f"{path}.{key}" if path else key

