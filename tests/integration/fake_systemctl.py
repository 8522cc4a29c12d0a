"""A stand-in for ``systemctl`` in test_cli_units.py, where systemd is not PID 1.

This is the one substitute the units tests use (the pure-logic exception of the house
rules: it replaces the ``shoal.cli.systemctl`` seam, nothing of Shoal): it records every
call in ``$FAKE_SYSTEMCTL_DIR/calls`` and does what systemd would with the units in
``$SHOAL_SYSTEMD_UNIT_DIR`` -- ``daemon-reload`` loads the files as they are then (a
unit written but not reloaded is unknown, or runs its old command line, as with
systemd), ``start`` runs the loaded ``ExecStart=`` line in a session of its own with
its output appended where ``StandardOutput=`` says, ``stop`` sends SIGTERM then SIGKILL
after ``TimeoutStopSec``. Only the verbs swctl uses; anything else fails loudly.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from shoal.cli import cluster, units

STATE = Path(os.environ["FAKE_SYSTEMCTL_DIR"])
UNITS = Path(os.environ["SHOAL_SYSTEMD_UNIT_DIR"])
LOADED = STATE / "loaded.json"


def loaded() -> dict[str, str]:
    try:
        data: dict[str, str] = json.loads(LOADED.read_text())
        return data
    except FileNotFoundError:
        return {}


def setting(text: str, key: str) -> str:
    for line in text.splitlines():
        if line.startswith(f"{key}="):
            return line.partition("=")[2]
    return ""


def child(unit: str) -> cluster.Child | None:
    try:
        return cluster.Child.from_record(json.loads((STATE / f"{unit}.pid").read_text()))
    except FileNotFoundError:
        return None


def active(unit: str) -> bool:
    c = child(unit)
    return c is not None and c.alive()


def start(unit: str) -> None:
    if active(unit):
        return
    text = loaded().get(unit)
    if text is None:
        sys.exit(f"Failed to start {unit}: Unit {unit} not found.")
    log = Path(setting(text, "StandardOutput").removeprefix("append:").replace("%%", "%"))
    c = cluster.start_process(unit, units.exec_start(text), log)
    (STATE / f"{unit}.pid").write_text(json.dumps(c.record()))


def stop(unit: str) -> None:
    c = child(unit)
    if c is not None:
        grace = float(setting(loaded().get(unit, ""), "TimeoutStopSec") or 90)
        c.stop(grace)
        (STATE / f"{unit}.pid").unlink()


def main(args: list[str]) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "calls", "a") as calls:
        calls.write(" ".join(args) + "\n")
    now = "--now" in args
    verb, *names = [a for a in args if a != "--now"]
    if verb == "daemon-reload":
        files = {p.name: p.read_text() for p in UNITS.glob("*.service")}
        LOADED.write_text(json.dumps(files))
    elif verb == "enable":
        for unit in names:
            if unit not in loaded():
                sys.exit(f"Failed to enable unit: Unit file {unit} does not exist.")
            (STATE / f"{unit}.enabled").touch()
            if now:
                start(unit)
    elif verb == "disable":
        for unit in names:
            (STATE / f"{unit}.enabled").unlink(missing_ok=True)
            if now:
                stop(unit)
    elif verb in ("start", "stop", "restart"):
        for unit in names:
            if verb != "start":
                stop(unit)
            if verb != "stop":
                start(unit)
    elif verb == "show" and len(names) == 2 and names[0].startswith("--property="):
        up = active(names[1])
        print(f"ActiveState={'active' if up else 'inactive'}")
        print(f"SubState={'running' if up else 'dead'}")
    else:
        sys.exit(f"fake systemctl: unsupported call {args}")


if __name__ == "__main__":
    main(sys.argv[1:])
