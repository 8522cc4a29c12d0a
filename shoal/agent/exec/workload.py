"""How a task template reads, once, for every real driver (docker and process).

The docker and process drivers must agree on what a manifest means — which argv runs,
what a health check is, which signal stops a task — or a service would behave
differently depending on the node it lands on. So the reading of ``spec.template`` lives
here, as pure functions the unit tests pin down, and the drivers only translate the
result into their own mechanism (a container config, a supervised child process).

Command semantics (Compose's, which Shoal's manifest follows, not ``docker service
create``'s): ``entrypoint`` replaces the image's ENTRYPOINT, ``command`` replaces its
CMD, ``args`` are appended to whichever command results. As with ``docker run
--entrypoint``, overriding the entrypoint drops the image's CMD. So the argv is
``(entrypoint ?? image ENTRYPOINT) + (command ?? (image CMD unless entrypoint given)) +
args``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import signal as signal_module
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from shoal.agent.exec.executor import (
    LABEL_NAMESPACE,
    LABEL_NODE,
    LABEL_SERVICE,
    LABEL_TASK,
    LABEL_TASK_UID,
    TaskRejectedError,
    TaskSpec,
)
from shoal.crds.units import parse_cpus, parse_duration, parse_size

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_GRACE = 10.0  # Swarm's stop grace period

# Docker's health check defaults (used when the manifest leaves a field unset).
HEALTH_INTERVAL = 30.0
HEALTH_TIMEOUT = 30.0
HEALTH_START_PERIOD = 0.0
HEALTH_RETRIES = 3

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_.-]")


def task_labels(task: TaskSpec) -> dict[str, str]:
    """The template's labels plus Shoal's own, which always win (adoption relies on them)."""
    labels = {str(k): str(v) for k, v in (task.template.get("labels") or {}).items()}
    labels.update({
        LABEL_TASK_UID: task.uid,
        LABEL_TASK: task.name,
        LABEL_NAMESPACE: task.namespace,
        LABEL_SERVICE: task.service,
        LABEL_NODE: task.node,
    })
    return labels


def workload_name(task_name: str) -> str:
    """``task_name`` made valid as a Docker container name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)."""
    name = _NAME_BAD.sub("-", task_name)[:200]
    if not name or not name[0].isalnum():
        name = f"t{name}"
    return name if len(name) > 1 else f"{name}0"


def _str_list(template: Mapping[str, Any], key: str) -> list[str] | None:
    value = template.get(key)
    if value is None:
        return None
    if isinstance(value, str):  # tolerate Compose's string form: one shell-free word list
        return value.split()
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise TaskRejectedError(f"template.{key} must be a list of strings, not {value!r}")
    return list(value)


def resolve_command(template: Mapping[str, Any], image_entrypoint: Sequence[str] | None = None,
                    image_cmd: Sequence[str] | None = None,
                    ) -> tuple[list[str] | None, list[str] | None]:
    """(entrypoint, cmd) to give the runtime; None means "keep the image's".

    See the module docstring for the rule. ``image_cmd`` is only consulted when
    ``args`` must be appended to the image's CMD.
    """
    entrypoint = _str_list(template, "entrypoint")
    command = _str_list(template, "command")
    args = _str_list(template, "args") or []
    if entrypoint is not None:
        return entrypoint, (command or []) + args
    if command is not None:
        return None, command + args
    if args:
        return None, list(image_cmd or []) + args
    return None, None


def full_argv(template: Mapping[str, Any]) -> list[str]:
    """The argv of a task run without an image (the process driver)."""
    entrypoint, cmd = resolve_command(template)
    return (entrypoint or []) + (cmd or [])


def environment(template: Mapping[str, Any]) -> dict[str, str]:
    env = template.get("env") or {}
    if not isinstance(env, Mapping):
        raise TaskRejectedError(f"template.env must be a map of strings, not {env!r}")
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def stop_grace(template: Mapping[str, Any]) -> float:
    value = template.get("stopGracePeriod")
    if value is None:
        return DEFAULT_GRACE
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise TaskRejectedError(f"template.stopGracePeriod: {exc}") from exc


def signal_number(name: str | int) -> int:
    """``SIGTERM``, ``TERM``, ``term`` or ``15`` -> 15 (Docker accepts all of these)."""
    if isinstance(name, int):
        return name
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = f"SIG{text}"
    try:
        return int(signal_module.Signals[text])
    except KeyError:
        raise TaskRejectedError(f"unknown stop signal {name!r}") from None


@dataclasses.dataclass(frozen=True)
class HealthSpec:
    """A health check with every field resolved (seconds, Docker's defaults filled in)."""

    test: list[str]  # ["CMD", argv...] or ["CMD-SHELL", "command"]; never NONE
    interval: float = HEALTH_INTERVAL
    timeout: float = HEALTH_TIMEOUT
    start_period: float = HEALTH_START_PERIOD
    retries: int = HEALTH_RETRIES

    def argv(self) -> list[str]:
        if self.test[0] == "CMD-SHELL":
            return ["/bin/sh", "-c", " ".join(self.test[1:])]
        return list(self.test[1:])


def _duration(check: Mapping[str, Any], key: str) -> float | None:
    value = check.get(key)
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise TaskRejectedError(f"template.healthcheck.{key}: {exc}") from exc


def normalize_test(test: Any) -> list[str] | None:
    """A manifest's ``test`` as Docker's list form; None when unset.

    A string is a shell command (Compose); a list without a ``CMD``/``CMD-SHELL``/``NONE``
    head is an argv (Compose accepts that too).
    """
    if test is None:
        return None
    if isinstance(test, str):
        return ["CMD-SHELL", test]
    if not isinstance(test, Sequence) or not all(isinstance(t, str) for t in test) or not test:
        raise TaskRejectedError(f"template.healthcheck.test must be a non-empty list of "
                                f"strings, not {test!r}")
    head = test[0].upper()
    if head in ("NONE", "CMD", "CMD-SHELL"):
        if head != "NONE" and len(test) < 2:
            raise TaskRejectedError(f"template.healthcheck.test {list(test)!r} has no command")
        return [head, *test[1:]]
    return ["CMD", *test]


def parse_healthcheck(template: Mapping[str, Any]) -> HealthSpec | None:
    """The template's health check, or None when it has none or disables it (``[NONE]``).

    Only meaningful where there is no image to inherit a check from (the process
    driver); the docker driver passes the raw fields on, see :func:`docker_healthcheck`.
    """
    check = template.get("healthcheck")
    if not check:
        return None
    test = normalize_test(check.get("test"))
    if test is None or test[0] == "NONE":
        return None
    retries = check.get("retries")
    return HealthSpec(
        test=test,
        interval=_duration(check, "interval") or HEALTH_INTERVAL,
        timeout=_duration(check, "timeout") or HEALTH_TIMEOUT,
        start_period=_duration(check, "startPeriod") or HEALTH_START_PERIOD,
        retries=int(retries) if retries else HEALTH_RETRIES,
    )


def docker_healthcheck(template: Mapping[str, Any]) -> dict[str, Any] | None:
    """Docker's HealthConfig (nanoseconds; zero = inherit the image's or the default)."""
    check = template.get("healthcheck")
    if not check:
        return None
    test = normalize_test(check.get("test"))
    if test is not None and test[0] == "NONE":
        return {"Test": ["NONE"]}

    def ns(key: str) -> int:
        seconds = _duration(check, key)
        return 0 if seconds is None else round(seconds * 1e9)

    config: dict[str, Any] = {
        "Test": test or [],
        "Interval": ns("interval"),
        "Timeout": ns("timeout"),
        "StartPeriod": ns("startPeriod"),
        "Retries": int(check.get("retries") or 0),
    }
    for key in ("Interval", "Timeout", "StartPeriod"):
        if 0 < config[key] < 1_000_000:
            raise TaskRejectedError(f"template.healthcheck: {key[0].lower()}{key[1:]} must "
                                    f"be at least 1ms")
    return config


@dataclasses.dataclass(frozen=True)
class Resources:
    nano_cpus: int | None = None
    memory: int | None = None
    memory_reservation: int | None = None


def resources(template: Mapping[str, Any]) -> Resources:
    spec = template.get("resources") or {}
    limits = spec.get("limits") or {}
    reservations = spec.get("reservations") or {}

    def parse(section: Mapping[str, Any], key: str, where: str, fn: Any) -> Any:
        value = section.get(key)
        if value is None or value == "" or value == 0:
            return None
        try:
            return fn(value)
        except ValueError as exc:
            raise TaskRejectedError(f"template.resources.{where}.{key}: {exc}") from exc

    cpus = parse(limits, "cpus", "limits", parse_cpus)
    return Resources(
        nano_cpus=math.ceil(cpus * 1e9) if cpus else None,
        memory=parse(limits, "memory", "limits", parse_size),
        memory_reservation=parse(reservations, "memory", "reservations", parse_size),
    )


def parse_timestamp(text: bytes) -> float:
    """RFC 3339 nano timestamps (``2024-05-01T10:00:00.123456789Z``, as Docker's logs and
    the CRI log format write them) as epoch seconds; nanoseconds survive as a fraction."""
    value = text.decode()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    head, dot, rest = value.partition(".")
    fraction = 0.0
    if dot:
        digits = rest
        zone = ""
        for i, ch in enumerate(rest):
            if not ch.isdigit():
                digits, zone = rest[:i], rest[i:]
                break
        fraction = float(f"0.{digits}") if digits else 0.0
        value = head + zone
    return datetime.fromisoformat(value).timestamp() + fraction
