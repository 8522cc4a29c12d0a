"""shoal.agent.exec.workload: what the docker and process drivers add to a template's
reading (labels, names, signals, health checks in Docker's units or with its defaults)."""

from __future__ import annotations

import pytest

from shoal.agent.exec.executor import (
    LABEL_NODE,
    LABEL_TASK_UID,
    TaskRejectedError,
    TaskSpec,
)
from shoal.agent.exec.workload import (
    HealthSpec,
    docker_healthcheck,
    health_spec,
    rejecting,
    signal_number,
    task_labels,
    workload_name,
)
from shoal.crds import template as tpl


def test_labels_names_and_signals() -> None:
    task = TaskSpec("u1", "web.1.abc", "ns", "web", "n1", 1,
                    {"labels": {LABEL_NODE: "forged", "team": "x"}})
    labels = task_labels(task)
    assert labels[LABEL_NODE] == "n1" and labels[LABEL_TASK_UID] == "u1"
    assert labels["team"] == "x"
    assert workload_name("web.1.abc") == "web.1.abc"
    assert workload_name("_odd name/x") == "t_odd-name-x"
    assert signal_number("SIGTERM") == signal_number("term") == signal_number("15") == 15
    with pytest.raises(TaskRejectedError, match="unknown stop signal"):
        signal_number("SIGNOPE")


def test_healthcheck_for_docker_and_for_the_process_driver() -> None:
    template = {"healthcheck": {"test": ["CMD-SHELL", "true"], "interval": "1s",
                                "timeout": "500ms", "startPeriod": 2, "retries": 4}}
    assert docker_healthcheck(template) == {
        "Test": ["CMD-SHELL", "true"], "Interval": 1_000_000_000, "Timeout": 500_000_000,
        "StartPeriod": 2_000_000_000, "Retries": 4}
    assert health_spec(template) == HealthSpec(["CMD-SHELL", "true"], 1.0, 0.5, 2.0, 4)
    assert HealthSpec(["CMD-SHELL", "a && b"]).argv() == ["/bin/sh", "-c", "a && b"]
    assert HealthSpec(["CMD", "nc", "-z"]).argv() == ["nc", "-z"]
    # unset fields: Docker's defaults; NONE disables the image's check
    assert health_spec({"healthcheck": {"test": ["CMD", "curl", "x"]}}) == HealthSpec(
        ["CMD", "curl", "x"], 30.0, 30.0, 0.0, 3)
    assert docker_healthcheck({"healthcheck": {"test": ["NONE"]}}) == {"Test": ["NONE"]}
    assert health_spec({"healthcheck": {"test": ["NONE"]}}) is None
    assert docker_healthcheck({"healthcheck": {"retries": 5}})["Test"] == []  # image's test
    assert health_spec({"healthcheck": {"retries": 5}}) is None  # no image to adjust
    assert health_spec({}) is None and docker_healthcheck({}) is None


def test_a_template_admission_would_refuse_rejects_the_task() -> None:
    # Stricter than the agent used to be, as admission is: a test as one string, or
    # without its CMD head, or a timing Docker refuses, is never run.
    for check in ({"test": "curl x"}, {"test": ["curl", "x"]}, {"test": ["cmd", "x"]},
                  {"test": ["CMD", "x"], "interval": "1d"},
                  {"test": ["CMD", "x"], "timeout": "100us"}):
        with pytest.raises(tpl.TemplateError):
            health_spec({"healthcheck": check})
        with pytest.raises(TaskRejectedError, match=r"^spec\.template\.healthcheck"), \
                rejecting():
            docker_healthcheck({"healthcheck": check})
