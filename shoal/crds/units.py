"""Durations, byte sizes and CPU counts as people write them in manifests and on the CLI.

Swarm users write Go/Docker durations (``1m30s``, ``500ms``) and Docker sizes (``64m``);
Kubernetes users write quantities (``64Mi``, ``1G``, ``500m`` CPUs). Shoal accepts both
spellings, so one parser per unit lives here, in the lowest layer: the validator checks
manifests with the same functions the controllers and agent later use to read them, so
anything that passes validation is guaranteed to parse again downstream.

Size suffixes — the one place where the two traditions disagree — follow this rule:
*a Kubernetes spelling means the Kubernetes value, every other spelling means Docker's*.

- ``Ki Mi Gi Ti Pi Ei``: binary (1024^n) — Kubernetes binary quantities.
- ``k K M G T P E``: decimal (1000^n) — Kubernetes decimal quantities (``K`` is not
  Kubernetes; it is read like ``k``). So ``1G`` is 10^9 bytes, where Docker would read
  2^30: write ``1Gi`` or ``1g`` for that.
- ``m g t p``: binary — Docker's ``--memory 64m``. As a Kubernetes suffix ``m`` means
  *milli*, which is meaningless for bytes, so Docker's reading is the only useful one.
- ``kb mb gb tb pb`` in any case: binary — Docker's ``units.RAMInBytes``.
- ``b``/``B`` or no suffix: bytes.

Durations are exact: they are parsed to integer nanoseconds first (as Go does) and only
then turned into float seconds, so ``format_duration(parse_duration(s))`` round-trips.
"""

from __future__ import annotations

import functools
import math
import re
from fractions import Fraction

_NS_PER_UNIT: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # MICRO SIGN, what Go prints
    "\u03bcs": 1_000,  # GREEK SMALL LETTER MU, what people type
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_BARE_NUMBER_RE = re.compile(rf"^{_NUMBER}$")
# Longest units first so that "ms" is not read as "m" followed by garbage.
_DURATION_PART_RE = re.compile(rf"({_NUMBER})(ns|us|\u00b5s|\u03bcs|ms|h|m|s)")

_DURATION_HINT = "use a number with a unit such as 500ms, 5s, 1m30s"


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value``: Go duration text (``1h2m3.5s``, ``500ms``) or a bare number.

    Bare numbers (``30``, ``"2.5"``) are seconds, as in Compose files. Negative durations
    are rejected: nothing in an orchestrator waits for negative time, and a minus sign in
    a manifest is far more often a typo than intent.
    """
    return _duration_ns(value) / 1e9


def _duration_ns(value: str | int | float) -> int:
    if isinstance(value, bool):  # bool is an int subclass; "true" is never a duration
        raise ValueError(f"invalid duration {value!r}: {_DURATION_HINT}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"invalid duration {value!r}: {_DURATION_HINT}")
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        return round(Fraction(value) * 1_000_000_000)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: {_DURATION_HINT}")
    return _parse_duration_text(value)


@functools.lru_cache(maxsize=1024)  # manifests repeat a handful of values ("5s", "0s")
def _parse_duration_text(value: str) -> int:
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f'invalid duration "{value}": must not be negative')
    text = text.removeprefix("+")
    if not text:
        raise ValueError(f'invalid duration "{value}": {_DURATION_HINT}')
    if _BARE_NUMBER_RE.match(text):
        return round(Fraction(text) * 1_000_000_000)
    total = Fraction(0)
    pos = 0
    while pos < len(text):
        match = _DURATION_PART_RE.match(text, pos)
        if match is None:
            raise ValueError(f'invalid duration "{value}": {_duration_hint(text[pos:])}')
        total += Fraction(match.group(1)) * _NS_PER_UNIT[match.group(2)]
        pos = match.end()
    return round(total)


def _duration_hint(rest: str) -> str:
    # Days and weeks are the units people most often reach for; Go has neither.
    if re.match(rf"^{_NUMBER}[dw]", rest):
        return "days and weeks are not units; use hours such as 24h or 168h"
    if _BARE_NUMBER_RE.match(rest):
        return f'missing unit after "{rest}"; {_DURATION_HINT}'
    return _DURATION_HINT


def format_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()``: 90 -> ``1m30s``, 0.5 -> ``500ms``, 0 -> ``0s``.

    Microseconds are written ``us`` rather than Go's ``µs`` to keep CLI output ASCII;
    ``parse_duration`` reads both.
    """
    ns = round(Fraction(seconds) * 1_000_000_000)
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_fraction(ns, 1_000)}us"
    if ns < 1_000_000_000:
        return f"{sign}{_fraction(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, _NS_PER_UNIT["h"])
    minutes, rest = divmod(rest, _NS_PER_UNIT["m"])
    secs = f"{_fraction(rest, 1_000_000_000)}s"
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}"
    if minutes:
        return f"{sign}{minutes}m{secs}"
    return f"{sign}{secs}"


def _fraction(value: int, unit: int) -> str:
    """``value / unit`` in decimal without float noise or trailing zeros (1500, 1000 -> 1.5)."""
    whole, rest = divmod(value, unit)
    if not rest:
        return str(whole)
    digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


_SIZE_SUFFIXES: dict[str, int] = {
    "": 1,
    "b": 1,
    "B": 1,
    # Kubernetes binary quantities.
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
    # Kubernetes decimal quantities ("K" is not Kubernetes; it is read like "k").
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
    # Docker's lowercase single letters: not Kubernetes byte suffixes, so Docker's meaning.
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
    "p": 1024**5,
}
_DOCKER_B_SUFFIXES: dict[str, int] = {"kb": 1024, "mb": 1024**2, "gb": 1024**3,
                                      "tb": 1024**4, "pb": 1024**5}
_SIZE_RE = re.compile(rf"^({_NUMBER})\s*([A-Za-z]*)$")
_SIZE_HINT = "use bytes or a number with a unit such as 512Ki, 64Mi, 1Gi, 1G or 64m"


def parse_size(value: str | int | float) -> int:
    """Bytes in ``value`` (``64Mi``, ``1G``, ``64m``, ``1024``); see the module table.

    Fractions round up (``0.5Ki`` -> 512, ``1.0001`` -> 2) as Kubernetes does, so a
    limit is never silently tightened.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: {_SIZE_HINT}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"invalid size {value!r}: must be a number of bytes >= 0")
        return math.ceil(Fraction(value))
    if not isinstance(value, str):
        raise ValueError(f"invalid size {value!r}: {_SIZE_HINT}")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f'invalid size "{value}": must not be negative')
    match = _SIZE_RE.match(text.removeprefix("+"))
    if match is None:
        raise ValueError(f'invalid size "{value}": {_SIZE_HINT}')
    number, suffix = match.groups()
    multiplier = _SIZE_SUFFIXES.get(suffix) or _DOCKER_B_SUFFIXES.get(suffix.lower())
    if multiplier is None:
        raise ValueError(f'invalid size "{value}": unknown unit "{suffix}"; {_SIZE_HINT}')
    return math.ceil(Fraction(number) * multiplier)


def format_size(size: int) -> str:
    """Bytes in the largest binary unit that divides them exactly (67108864 -> ``64Mi``)."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _SIZE_SUFFIXES[suffix]
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


_CPUS_HINT = "use a number of CPUs such as 0.5 or 2, or millicores such as 500m"


def parse_cpus(value: str | int | float) -> float:
    """CPUs in ``value``: ``0.5``, ``"0.5"``, ``2`` or Kubernetes millicores ``"500m"``."""
    if isinstance(value, bool):
        raise ValueError(f"invalid CPU count {value!r}: {_CPUS_HINT}")
    if isinstance(value, int | float):
        cpus = float(value)
    elif isinstance(value, str):
        text = value.strip()
        scale = 1.0
        if text.endswith("m"):
            text, scale = text[:-1], 0.001
        if not _BARE_NUMBER_RE.match(text.removeprefix("+")):
            raise ValueError(f'invalid CPU count "{value}": {_CPUS_HINT}')
        cpus = float(text) * scale
    else:
        raise ValueError(f"invalid CPU count {value!r}: {_CPUS_HINT}")
    if not math.isfinite(cpus) or cpus < 0:
        raise ValueError(f"invalid CPU count {value!r}: must be a number >= 0")
    return cpus
