"""What the docker and process drivers share once a task template has been read.

The template itself is read by :mod:`shoal.crds.template`, the one reading admission
uses too, so a driver runs exactly what admission accepted. This module holds what the
drivers add on top, which must not differ between them either or a service would behave
differently depending on the node it lands on: Shoal's own labels, container-safe
names, stop-signal numbers, and the health check completed with Docker's defaults (for
the process driver, which runs checks itself) or put in Docker's units (nanoseconds).

A template the accessors refuse is a task that can never run: :func:`rejecting` turns
their ``TemplateError`` into the executor contract's ``TaskRejectedError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import signal as signal_module
from collections.abc import Iterator, Mapping
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
from shoal.crds import template as tpl

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's health check defaults (used when the manifest leaves a field unset).
HEALTH_INTERVAL = 30.0
HEALTH_TIMEOUT = 30.0
HEALTH_START_PERIOD = 0.0
HEALTH_RETRIES = 3

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_.-]")


@contextlib.contextmanager
def rejecting() -> Iterator[None]:
    """Read a template inside this: a field the accessors refuse rejects the task."""
    try:
        yield
    except tpl.TemplateError as exc:
        raise TaskRejectedError(str(exc)) from exc


def task_labels(task: TaskSpec) -> dict[str, str]:
    """The template's labels plus Shoal's own, which always win (adoption relies on them)."""
    labels = tpl.labels(task.template)
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


def health_spec(template: Mapping[str, Any]) -> HealthSpec | None:
    """The health check to run, or None when there is none to run: none given, turned
    off (``[NONE]``) or only timings (which adjust an image's check, and there is none).

    For the process driver, which has no image to inherit a check from; the docker
    driver hands the check to dockerd, see :func:`docker_healthcheck`.
    """
    check = tpl.healthcheck(template)
    if check is None or check.disabled or not check.test:
        return None
    # A zero timing means "the default", as it does to Docker.
    return HealthSpec(
        test=check.test,
        interval=check.interval or HEALTH_INTERVAL,
        timeout=check.timeout or HEALTH_TIMEOUT,
        start_period=check.start_period or HEALTH_START_PERIOD,
        retries=check.retries or HEALTH_RETRIES,
    )


def docker_healthcheck(template: Mapping[str, Any]) -> dict[str, Any] | None:
    """Docker's HealthConfig (nanoseconds; zero = inherit the image's or the default)."""
    check = tpl.healthcheck(template)
    if check is None:
        return None
    if check.disabled:
        return {"Test": ["NONE"]}

    def ns(seconds: float | None) -> int:
        return 0 if seconds is None else round(seconds * 1e9)

    return {
        "Test": check.test,
        "Interval": ns(check.interval),
        "Timeout": ns(check.timeout),
        "StartPeriod": ns(check.start_period),
        "Retries": check.retries or 0,
    }


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
