"""shoal.agent.docker.driver: the pure parts (inspect output, multiplexed log frames,
mounts)."""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest

from shoal.agent.docker.driver import (
    docker_mount,
    frame_lines,
    observed_from_inspect,
    parse_timestamp,
    read_frames,
)
from shoal.agent.exec.executor import LogLine, Observed
from shoal.crds import template as tpl


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


def test_mounts_as_docker_takes_them() -> None:
    # The template's rules (absolute paths, a bind's source) are crds.template's; here
    # only the translation: an anonymous volume keeps "", a tmpfs has no source at all.
    read = tpl.mounts({"mounts": [{"target": "/data"},
                                  {"type": "bind", "source": "/srv", "target": "/srv",
                                   "readOnly": True},
                                  {"type": "tmpfs", "target": "/tmp"}]})
    assert [dict(docker_mount(m)) for m in read] == [
        {"Target": "/data", "Source": "", "Type": "volume", "ReadOnly": False},
        {"Target": "/srv", "Source": "/srv", "Type": "bind", "ReadOnly": True},
        {"Target": "/tmp", "Source": None, "Type": "tmpfs", "ReadOnly": False},
    ]
