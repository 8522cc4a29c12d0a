"""The pure parts of the agent's task files: which files a template asks for, how a
file is written (owner, mode, whole)."""

from __future__ import annotations

import os
from pathlib import Path

from shoal.agent import taskfiles


def test_each_reference_gets_its_own_file_name_and_full_target() -> None:
    found = taskfiles.wanted({
        "secrets": [{"source": "db", "uid": "70", "mode": 0o400}, {"source": "db",
                                                                    "target": "copy"}],
        "configs": [{"source": "db"}]})
    assert [(w.kind, w.name, w.ref.source, w.ref.target, w.ref.uid, w.ref.mode)
            for w in found] == [
        ("secret", "secret-0", "db", "/run/secrets/db", "70", 0o400),
        ("secret", "secret-1", "db", "/run/secrets/copy", "0", 0o444),
        ("config", "config-0", "db", "/db", "0", 0o444)]


def test_a_file_is_replaced_whole_with_its_owner_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "secret-0"
    taskfiles._write(path, b"old", 0, 0, 0o644)
    taskfiles._write(path, b"new", 1000, 50, 0o400)
    st = path.stat()
    assert path.read_bytes() == b"new" and (st.st_uid, st.st_gid) == (1000, 50)
    assert st.st_mode & 0o7777 == 0o400
    assert os.listdir(tmp_path) == ["secret-0"]  # no temporary left behind

