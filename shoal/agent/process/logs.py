"""Reading a process task's output: the CRI log files its shim writes.

The shim (:mod:`.shim`) writes ``UID.log`` — one record per line, ``<RFC 3339 nano time>
<stdout|stderr> <F|P> <text>``, a ``P`` marking a piece of a long line — and rotates it
to ``UID.log.1`` past a size limit. This module owns the reader's side: decoding records
(joining pieces), reading the last N records without reading a whole file, and following
the log across a rotation until the task's exit record says no more will come.

Kept apart from the driver because none of it touches the task's life cycle: it is a
file format and a tail loop, tested on their own.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from shoal.agent.exec.executor import LogLine
from shoal.agent.exec.workload import parse_timestamp

FOLLOW_POLL = 0.1  # seconds between looks at a followed log that has nothing new


def parse_cri(record: bytes) -> tuple[float, str, bool, bytes] | None:
    """One CRI log record: (timestamp, stream, complete?, text); None if malformed."""
    parts = record.split(b" ", 3)
    if len(parts) < 3:
        return None
    try:
        stamp = parse_timestamp(parts[0])
    except ValueError:
        return None
    text = parts[3] if len(parts) == 4 else b""
    return stamp, parts[1].decode(errors="replace"), parts[2] != b"P", text


class CriDecoder:
    """Turns CRI records into LogLines, joining ``P`` pieces of one long line."""

    def __init__(self, timestamps: bool) -> None:
        self.timestamps = timestamps
        self.partial: dict[str, bytes] = {}

    def records(self, records: list[bytes]) -> list[LogLine]:
        out: list[LogLine] = []
        for record in records:
            parsed = parse_cri(record)
            if parsed is None:
                continue
            stamp, stream, complete, text = parsed
            text = self.partial.pop(stream, b"") + text
            if not complete:
                self.partial[stream] = text
                continue
            out.append(LogLine(stream, text, stamp if self.timestamps else None))
        return out


def tail_of(f: Any, end: int, count: int | None) -> list[bytes]:
    """Records in ``f`` before byte ``end``: all, or the last ``count`` (read backwards)."""
    if count is None:
        f.seek(0)
        chunk = f.read(end)
        start = 0
    else:
        start, chunk, block = end, b"", 65536
        while start > 0 and chunk.count(b"\n") <= count:
            new_start = max(0, start - block)
            f.seek(new_start)
            chunk = f.read(start - new_start) + chunk
            start, block = new_start, block * 2
    records = chunk.split(b"\n")
    records.pop()  # after the last newline: empty, or a record still being written
    if start > 0:
        records = records[1:]  # the first piece may begin mid-record
    return records if count is None else records[-count:] if count else []


def _read_backlog(rotated: Path, handle: Any, count: int | None) -> list[bytes]:
    """What the logs hold now, ending exactly where ``handle`` (the current log) will
    continue reading, so a follower neither skips nor repeats a record."""
    end = os.fstat(handle.fileno()).st_size if handle is not None else 0
    records = tail_of(handle, end, count) if handle is not None else []
    if count is None or len(records) < count:
        try:
            with open(rotated, "rb") as f:
                older = tail_of(f, os.fstat(f.fileno()).st_size,
                                None if count is None else count - len(records))
            records = older + records
        except OSError:
            pass
    if handle is not None:
        handle.seek(end)
    return records


def _open_log(path: Path) -> Any:
    try:
        return open(path, "rb")  # closed by the caller
    except OSError:
        return None


def _rotated(handle: Any, path: Path) -> bool:
    try:
        return os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino
    except OSError:
        return True


async def read_log(log: Path, exit_record: Path, follow: bool = False,
                   tail: int | None = None, timestamps: bool = False
                   ) -> AsyncIterator[LogLine]:
    """The lines of the log at ``log`` (and its rotated ``log.1``); with ``follow``, keeps
    reading until ``exit_record`` exists and the log is drained."""
    decoder = CriDecoder(timestamps)
    rotated = Path(f"{log}.1")
    handle = _open_log(log)
    try:
        backlog = await asyncio.to_thread(_read_backlog, rotated, handle, tail)
        for line in decoder.records(backlog):
            yield line
        if not follow:
            return
        pending = b""
        while True:
            # Checked before reading: the shim writes the exit record after the last
            # log record, so once it exists, reading to EOF means reading it all. (One
            # stat of a local file per poll: not worth a thread hop.)
            exited = exit_record.exists()  # noqa: ASYNC240
            if handle is None:
                handle = _open_log(log)
            data = handle.read() if handle is not None else b""
            if data:
                pending += data
                *records, pending = pending.split(b"\n")
                for line in decoder.records(records):
                    yield line
                continue
            if handle is not None and _rotated(handle, log):
                handle.close()  # drained: continue with the new file
                handle = None
                continue
            if exited:
                return
            await asyncio.sleep(FOLLOW_POLL)
    finally:
        if handle is not None:
            handle.close()
