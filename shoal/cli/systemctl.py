"""The one seam between swctl and systemd: whether to use it, where units go, and every
``systemctl`` call.

What it owns:

* the choice (:func:`wanted`): systemd manages a node's processes when it runs as PID 1
  (``/run/systemd/system`` exists, the test ``sd_booted()`` makes) unless ``--no-systemd``
  or ``$SHOAL_SYSTEMD=no`` says otherwise; ``$SHOAL_SYSTEMD=yes`` forces it (tests point
  it at a fake ``systemctl``);
* the unit directory: ``/etc/systemd/system`` (``$SHOAL_SYSTEMD_UNIT_DIR`` for tests);
* running ``systemctl`` -- the program found on ``PATH``, so a test may put a recording
  script first on it -- with a clear error naming the call when it fails.

Why a module this small: everything else about units is pure (``units``) or lives in
``nodeprocs``; keeping the side effects here makes them the only thing a test replaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

from shoal.cli import errors

ENV: Final = "SHOAL_SYSTEMD"
UNIT_DIR_ENV: Final = "SHOAL_SYSTEMD_UNIT_DIR"
UNIT_DIR: Final = Path("/etc/systemd/system")
BOOTED_MARK: Final = Path("/run/systemd/system")
TIMEOUT: Final = 60.0


def wanted(no_systemd: bool = False) -> bool:
    """Should this node's processes be systemd units?"""
    env = os.environ.get(ENV, "").strip().lower()
    if no_systemd or env in ("0", "no", "false", "off"):
        return False
    if env in ("1", "yes", "true", "on"):
        return True
    if env:
        raise errors.CliError(f"${ENV} is {env!r}: expected yes or no (or unset: systemd "
                              f"is used when it runs as PID 1, i.e. {BOOTED_MARK} exists)")
    return BOOTED_MARK.is_dir()


def unit_dir() -> Path:
    return Path(os.environ.get(UNIT_DIR_ENV) or UNIT_DIR)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``systemctl ARGS``; a failure (with ``check``) is a CliError quoting its output."""
    binary = shutil.which("systemctl")
    if binary is None:
        raise errors.CliError("systemctl is not on PATH, yet this node's processes are "
                              "systemd units: install systemd, or run `swctl leave` and "
                              "init/join again with --no-systemd")
    try:
        proc = subprocess.run([binary, *args], capture_output=True, text=True,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise errors.CliError(f"`systemctl {' '.join(args)}` did not finish within "
                              f"{TIMEOUT:g}s") from None
    if check and proc.returncode != 0:
        out = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        raise errors.CliError([f"`systemctl {' '.join(args)}` failed (exit code "
                               f"{proc.returncode})", *(f"  {line}" for line in out[-5:])])
    return proc


def state(unit: str) -> dict[str, str]:
    """``ActiveState``/``SubState`` of ``unit`` (empty values when systemd does not know
    it)."""
    out = run("show", "--property=ActiveState,SubState", unit, check=False).stdout
    found = dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)
    return {"ActiveState": found.get("ActiveState", ""), "SubState": found.get("SubState", "")}
