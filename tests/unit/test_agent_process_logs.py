"""shoal.agent.process.logs: the CRI log files the shim writes, read back."""

from __future__ import annotations

from typing import Any

from shoal.agent.exec.executor import LogLine
from shoal.agent.process.logs import CriDecoder, parse_cri, tail_of
from shoal.agent.process.shim import LogWriter, rfc3339_nano


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
    lines = CriDecoder(timestamps=False).records(records)
    assert lines == [LogLine("stdout", b"one"), LogLine("stderr", b"err"),
                     LogLine("stdout", b"two"), LogLine("stdout", b"x" * 20000)]
    stamp = parse_cri(records[0])
    assert stamp is not None and abs(stamp[0] - __import__("time").time()) < 60
    with open(path, "rb") as f:
        size = path.stat().st_size
        assert tail_of(f, size, 2) == records[-2:]
        assert tail_of(f, size, None) == records
        assert tail_of(f, size, 0) == []
    assert rfc3339_nano(1714557600_123456789) == "2024-05-01T10:00:00.123456789Z"


def test_log_rotation(tmp_path: Any) -> None:
    path = tmp_path / "t.log"
    writer = LogWriter(str(path), max_bytes=200)
    for i in range(10):
        writer.feed("stdout", f"line {i}\n".encode())
    assert (tmp_path / "t.log.1").exists()
    assert path.stat().st_size <= 200
