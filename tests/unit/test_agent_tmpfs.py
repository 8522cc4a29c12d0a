"""shoal/agent/tmpfs.py: reading the mount table (the mounting itself is exercised by
tests/e2e/test_agent_taskfiles.py, as root, in two mount namespaces)."""

from __future__ import annotations

from pathlib import Path

from shoal.agent import tmpfs


def test_mount_points_with_spaces_are_read_from_their_escapes() -> None:
    assert tmpfs._unescape(r"/run/shoal/a\040b\134c") == "/run/shoal/a b\\c"


def test_a_path_that_is_no_mount_point_is_no_tmpfs() -> None:
    assert tmpfs.is_tmpfs(Path("/proc"), "self") is False  # proc, not tmpfs
    assert tmpfs.is_tmpfs(Path("/no/such/dir")) is False
