"""What the docker and process drivers read out of a task template, and their parsers."""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest

from shoal.agent.docker.driver import (
    frame_lines,
    observed_from_inspect,
    parse_timestamp,
    read_frames,
)
from shoal.agent.exec.executor import (
    LABEL_NODE,
    LABEL_TASK_UID,
    LogLine,
    Observed,
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
from shoal.agent.process.driver import _CriDecoder, _tail_of, parse_cri
from shoal.agent.process.shim import LogWriter, rfc3339_nano


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


def inspect(status: str, **state: Any) -> dict[str, Any]:
    return {"Id": "c1", "State": {"Status": status, "Running": status == "running", **state}}


def test_observed_from_inspect() -> None:
    assert observed_from_inspect(inspect("running", Pid=42, Health={"Status": "healthy"})) \
        == Observed("running", health="healthy", workload_id="c1", pid=42)
    assert observed_from_inspect(inspect("created", Pid=0)) == Observed("created",
                                                                        workload_id="c1")
    failed = observed_from_inspect(inspect("created", ExitCode=127, Error='exec: "x": not found'))
    assert (failed.state, failed.exit_code, failed.error) == ("exited", 127,
                                                              'exec: "x": not found')
    oom = observed_from_inspect(inspect("exited", ExitCode=137, OOMKilled=True,
                                        Health={"Status": "unhealthy"}))
    assert (oom.state, oom.exit_code, oom.health) == ("exited", 137, "none")
    assert "out of memory" in oom.error


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(payload)) + payload


def test_docker_log_frames() -> None:
    data = frame(1, b"2024-05-01T10:00:00.123456789Z hello\n") + frame(2, b"oops\n")
    frames = list(read_frames(io.BytesIO(data).read))
    assert frames == [("stdout", b"2024-05-01T10:00:00.123456789Z hello\n"),
                      ("stderr", b"oops\n")]
    assert list(read_frames(io.BytesIO(data[:-2]).read))[1:] == []  # truncated: dropped
    line = frame_lines(*frames[0], timestamps=True)[0]
    assert line.line == b"hello" and line.timestamp == pytest.approx(1714557600.123457)
    assert frame_lines("stderr", b"a\nb\n", timestamps=False) == [
        LogLine("stderr", b"a"), LogLine("stderr", b"b")]
    assert parse_timestamp(b"2024-05-01T10:00:00Z") == 1714557600.0


def test_cri_log_round_trip(tmp_path: Any) -> None:
    path = tmp_path / "t.log"
    writer = LogWriter(str(path), max_bytes=0)
    writer.feed("stdout", b"one\ntw")
    writer.feed("stderr", b"err\n")
    writer.feed("stdout", b"o\n" + b"x" * 20000)
    writer.flush_partial()
    records = path.read_bytes().split(b"\n")[:-1]
    assert [r.split(b" ")[1:3] for r in records] == [
        [b"stdout", b"F"], [b"stderr", b"F"], [b"stdout", b"F"], [b"stdout", b"P"],
        [b"stdout", b"F"]]
    lines = _CriDecoder(timestamps=False).records(records)
    assert lines == [LogLine("stdout", b"one"), LogLine("stderr", b"err"),
                     LogLine("stdout", b"two"), LogLine("stdout", b"x" * 20000)]
    stamp = parse_cri(records[0])
    assert stamp is not None and abs(stamp[0] - __import__("time").time()) < 60
    with open(path, "rb") as f:
        size = path.stat().st_size
        assert _tail_of(f, size, 2) == records[-2:]
        assert _tail_of(f, size, None) == records
        assert _tail_of(f, size, 0) == []
    assert rfc3339_nano(1714557600_123456789) == "2024-05-01T10:00:00.123456789Z"


def test_log_rotation(tmp_path: Any) -> None:
    path = tmp_path / "t.log"
    writer = LogWriter(str(path), max_bytes=200)
    for i in range(10):
        writer.feed("stdout", f"line {i}\n".encode())
    assert (tmp_path / "t.log.1").exists()
    assert path.stat().st_size <= 200
