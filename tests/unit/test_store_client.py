"""``client.new_uid``: RFC 4122 version-4 UUIDs from a pooled random buffer."""

from __future__ import annotations

import os
import uuid

from shoal.store import client


def test_uids_are_version_4_and_distinct() -> None:
    uids = [client.new_uid() for _ in range(5000)]  # several refills of the pool
    assert len(set(uids)) == len(uids)
    for text in uids[:600]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_a_forked_child_does_not_repeat_its_parents_next_uids() -> None:
    client.new_uid()  # the pool now holds the parent's next UUIDs
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, "\n".join(client.new_uid() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as child_out:
        child = set(child_out.read().split("\n"))
    os.waitpid(pid, 0)
    parent = {client.new_uid() for _ in range(10)}
    assert len(child) == 10 and not child & parent
