"""shoal.agent.exec.workload: what the docker and process drivers read out of a task template."""

from __future__ import annotations

from typing import Any

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
    full_argv,
    parse_healthcheck,
    resolve_command,
    resources,
    signal_number,
    task_labels,
    workload_name,
)


@pytest.mark.parametrize(("template", "image_cmd", "expected"), [
    ({}, ["sh"], (None, None)),
    ({"command": ["echo", "hi"]}, ["sh"], (None, ["echo", "hi"])),
    ({"command": ["echo"], "args": ["a"]}, ["sh"], (None, ["echo", "a"])),
    ({"args": ["-c", "true"]}, ["sh"], (None, ["sh", "-c", "true"])),
    ({"entrypoint": ["tini", "--"]}, ["sh"], (["tini", "--"], [])),
    ({"entrypoint": ["tini"], "args": ["x"]}, ["sh"], (["tini"], ["x"])),
    ({"entrypoint": ["sh", "-c"], "command": ["echo $0", "z"], "args": ["y"]}, None,
     (["sh", "-c"], ["echo $0", "z", "y"])),
])
def test_command_semantics(template: dict[str, Any], image_cmd: list[str] | None,
                           expected: tuple[Any, Any]) -> None:
    assert resolve_command(template, image_cmd=image_cmd) == expected


def test_full_argv_and_bad_command() -> None:
    assert full_argv({"entrypoint": ["a"], "command": ["b"], "args": ["c"]}) == ["a", "b", "c"]
    assert full_argv({"image": "x"}) == []
    with pytest.raises(TaskRejectedError, match="list of strings"):
        full_argv({"command": [1, 2]})


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
    assert parse_healthcheck(template) == HealthSpec(["CMD-SHELL", "true"], 1.0, 0.5, 2.0, 4)
    assert HealthSpec(["CMD-SHELL", "a && b"]).argv() == ["/bin/sh", "-c", "a && b"]
    assert HealthSpec(["CMD", "nc", "-z"]).argv() == ["nc", "-z"]
    # unset fields: Docker's defaults; NONE disables the image's check
    assert parse_healthcheck({"healthcheck": {"test": "curl x"}}) == HealthSpec(
        ["CMD-SHELL", "curl x"], 30.0, 30.0, 0.0, 3)
    assert docker_healthcheck({"healthcheck": {"test": ["NONE"]}}) == {"Test": ["NONE"]}
    assert parse_healthcheck({"healthcheck": {"test": ["NONE"]}}) is None
    assert docker_healthcheck({"healthcheck": {"retries": 5}})["Test"] == []  # image's test
    assert parse_healthcheck({}) is None and docker_healthcheck({}) is None
    with pytest.raises(TaskRejectedError, match="interval"):
        docker_healthcheck({"healthcheck": {"test": ["CMD", "x"], "interval": "1d"}})
    with pytest.raises(TaskRejectedError, match="no command"):
        parse_healthcheck({"healthcheck": {"test": ["CMD"]}})


def test_resources() -> None:
    res = resources({"resources": {"limits": {"cpus": "500m", "memory": "64Mi"},
                                   "reservations": {"memory": "1g", "cpus": 1}}})
    assert (res.nano_cpus, res.memory, res.memory_reservation) == (
        500_000_000, 64 * 2**20, 2**30)
    assert resources({}).memory is None
    with pytest.raises(TaskRejectedError, match=r"resources\.limits\.memory"):
        resources({"resources": {"limits": {"memory": "lots"}}})
