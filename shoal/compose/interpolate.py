"""Variable interpolation as compose v3 does it: ``$VAR``, ``${VAR}``, ``${VAR:-d}``,
``${VAR-d}``, ``${VAR:?err}``, ``${VAR?err}`` and ``$$`` for a literal dollar.

Applied to every string value (never to keys) before anything else reads the file, as
Docker does, so a variable can stand for a replica count or a port. An unset variable
without a default becomes the empty string (Docker warns; the caller collects warnings).
"""

import re
from collections.abc import Callable, Mapping
from typing import Any

from shoal.compose.errors import ComposeError

_NAME = r"[_a-zA-Z][_a-zA-Z0-9]*"
# Docker's pattern: an unbraced ``$VAR`` also takes an operator and default up to the next
# ``}`` (``$VAR:-x`` works, and ``$HOST-name`` means HOST with default "name"); kept as is
# for parity, since files written against Docker rely on what it does.
_SUBST = rf"{_NAME}(?::?[-?][^}}]*)?"
_PATTERN = re.compile(
    rf"\$(?:(?P<escaped>\$)|(?P<named>{_SUBST})|\{{(?P<braced>{_SUBST})\}}|(?P<invalid>))"
)
_PARTS = re.compile(rf"^(?P<name>{_NAME})(?:(?P<op>:-|-|:\?|\?)(?P<arg>.*))?$", re.DOTALL)


def interpolate_text(
    text: str, env: Mapping[str, str], where: str, warn: Callable[[str], None]
) -> str:
    """``text`` with its variables replaced from ``env``; ``where`` names the key in errors."""

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        expr = match.group("named") or match.group("braced")
        parts = _PARTS.match(expr) if expr else None
        if parts is None:
            raise ComposeError(f'invalid interpolation format for {where}: "{text}"; '
                               "a variable is $NAME, ${NAME}, ${NAME:-default} or "
                               "${NAME?error}; write $$ for a literal dollar sign")
        name, op, arg = parts.group("name"), parts.group("op"), parts.group("arg")
        value = env.get(name)
        if op is None:
            return _lookup(name, env, where, warn)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if (op == ":?" and not value) or (op == "?" and value is None):
            raise ComposeError(f"required variable {name} is missing a value: {arg} "
                               f"(in {where}); set it in the environment or in .env")
        return value or ""

    return _PATTERN.sub(replace, text)


def _lookup(name: str, env: Mapping[str, str], where: str, warn: Callable[[str], None]) -> str:
    if name not in env:
        warn(f'The "{name}" variable is not set. Defaulting to a blank string.')
        return ""
    return env[name]


def interpolate(
    value: Any, env: Mapping[str, str], where: str, warn: Callable[[str], None]
) -> Any:
    """Every string in ``value`` (recursively, values only) interpolated."""
    if isinstance(value, str):
        return interpolate_text(value, env, where, warn)
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{where}.{k}", warn) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, where, warn) for v in value]
    return value
