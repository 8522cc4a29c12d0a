"""Typing the values interpolation produced, where the format wants a number or a boolean.

``replicas: ${REPLICAS}`` is the string ``"3"`` after interpolation; Docker casts it to an
integer at a fixed list of paths before validating, and so does Shoal, so the converter
reads typed values and a bad value is refused naming its key. Only strings are cast: a
value written as a number in YAML already is one.
"""

from collections.abc import Callable
from typing import Any

from shoal.compose.errors import ComposeError

_TRUE = frozenset({"y", "yes", "true", "on"})
_FALSE = frozenset({"n", "no", "false", "off"})


def _to_int(text: str) -> int:
    return int(text.strip())


def _to_float(text: str) -> float:
    return float(text.strip())


def _to_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"invalid boolean: {text}")


# Paths below the top level; "*" is any mapping key, "[]" any list item.
_SERVICE: list[tuple[tuple[str, ...], Callable[[str], Any]]] = [
    (("configs", "[]", "mode"), _to_int),
    (("secrets", "[]", "mode"), _to_int),
    (("healthcheck", "retries"), _to_int),
    (("healthcheck", "disable"), _to_bool),
    (("deploy", "replicas"), _to_int),
    (("deploy", "update_config", "parallelism"), _to_int),
    (("deploy", "update_config", "max_failure_ratio"), _to_float),
    (("deploy", "rollback_config", "parallelism"), _to_int),
    (("deploy", "rollback_config", "max_failure_ratio"), _to_float),
    (("deploy", "restart_policy", "max_attempts"), _to_int),
    (("deploy", "placement", "max_replicas_per_node"), _to_int),
    (("ports", "[]", "target"), _to_int),
    (("ports", "[]", "published"), _to_int),
    (("ulimits", "*"), _to_int),
    (("ulimits", "*", "hard"), _to_int),
    (("ulimits", "*", "soft"), _to_int),
    (("privileged",), _to_bool),
    (("read_only",), _to_bool),
    (("stdin_open",), _to_bool),
    (("tty",), _to_bool),
    (("volumes", "[]", "read_only"), _to_bool),
    (("volumes", "[]", "volume", "nocopy"), _to_bool),
]
PATHS: list[tuple[tuple[str, ...], Callable[[str], Any]]] = [
    (("services", "*", *path), cast) for path, cast in _SERVICE
] + [
    (("networks", "*", "external"), _to_bool),
    (("networks", "*", "internal"), _to_bool),
    (("networks", "*", "attachable"), _to_bool),
    (("volumes", "*", "external"), _to_bool),
    (("secrets", "*", "external"), _to_bool),
    (("configs", "*", "external"), _to_bool),
]


def cast_values(data: dict[str, Any]) -> None:
    """Cast, in place, the strings at Docker's typed paths of an interpolated file."""
    for path, cast in PATHS:
        _walk(data, path, cast, "")


def _walk(node: Any, path: tuple[str, ...], cast: Callable[[str], Any], where: str) -> None:
    head, rest = path[0], path[1:]
    if head == "[]":
        items: list[tuple[Any, Any]] = list(enumerate(node)) if isinstance(node, list) else []
    elif head == "*":
        items = list(node.items()) if isinstance(node, dict) else []
    else:
        items = [(head, node[head])] if isinstance(node, dict) and head in node else []
    for key, child in items:
        here = f"{where}.{key}" if where else str(key)
        if rest:
            _walk(child, rest, cast, here)
        elif isinstance(child, str):
            try:
                node[key] = cast(child)
            except ValueError as exc:
                raise ComposeError(f"{here}: failed to cast {child!r} to the expected type "
                                   f"({exc}); write a plain value here") from exc
