"""The choice between systemd units and detached processes (pure: environment and one
marker path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.cli import errors, systemctl


@pytest.fixture
def booted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    mark = tmp_path / "run-systemd-system"
    monkeypatch.setattr(systemctl, "BOOTED_MARK", mark)
    monkeypatch.delenv(systemctl.ENV, raising=False)
    return mark


def test_systemd_is_used_where_it_runs_as_pid_1(booted: Path) -> None:
    assert not systemctl.wanted()
    booted.mkdir()
    assert systemctl.wanted()
    assert not systemctl.wanted(no_systemd=True)


def test_the_environment_overrides_the_check(booted: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(systemctl.ENV, "yes")
    assert systemctl.wanted()
    assert not systemctl.wanted(no_systemd=True)  # the flag wins
    booted.mkdir()
    monkeypatch.setenv(systemctl.ENV, "no")
    assert not systemctl.wanted()
    monkeypatch.setenv(systemctl.ENV, "maybe")
    with pytest.raises(errors.CliError, match=r"\$SHOAL_SYSTEMD is 'maybe': expected yes or no"):
        systemctl.wanted()


def test_the_unit_dir_is_etc_systemd_system_unless_told(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(systemctl.UNIT_DIR_ENV, raising=False)
    assert systemctl.unit_dir() == Path("/etc/systemd/system")
    monkeypatch.setenv(systemctl.UNIT_DIR_ENV, str(tmp_path))
    assert systemctl.unit_dir() == tmp_path
