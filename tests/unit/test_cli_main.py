"""shoal/cli/main.py: what ``main`` does with arguments before any verb runs."""

from __future__ import annotations

import pytest

from shoal.cli import main


def test_an_argument_with_a_nul_byte_is_refused_up_front(
        capsys: pytest.CaptureFixture[str]) -> None:
    """bench/fuzz found it: ``config update NAME FILE`` with a NUL in FILE reached open()
    and ended in ``internal error: ValueError: embedded null byte``."""
    assert main.main(["config", "update", "web", "conf\x00.txt"]) == 1
    err = capsys.readouterr().err
    assert err == "error: argument 'conf\\x00.txt' contains a NUL byte; remove it\n"
