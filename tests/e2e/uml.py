"""Boot user-mode-linux on the host's own filesystem and run one Python program in it.

This machine's kernel has no IPVS; Debian's ``user-mode-linux`` package ships a kernel that
has it (as modules). This module owns the boot recipe, so tests and benchmarks only say
which program to run and read back the JSON it wrote:

* ``linux.uml rootfstype=hostfs rootflags=/ init=<run>/init.sh mem=<M>M`` -- the host's
  root, read-only, is the guest's root, so the host's Python, the repository and every
  tool are there without building an image. Only the run directory is mounted read-write
  (hostfs over itself), which is where the guest writes its log and ``result.json``.
* Console: ``con=null con0=fd:0,fd:1 ssl=null`` with stdin from /dev/null and stdout to
  ``console.log``: nothing ever waits on a terminal. ``umid``/``uml_dir`` keep UML's
  mconsole socket in the run directory instead of ``~/.uml``. UML backs guest memory with
  a file under ``$TMPDIR`` that must allow PROT_EXEC mappings: /dev/shm when writable,
  else the run directory.
* Modules: the guest gets ``<run>/modroot/lib/modules/<ver>`` -> ``/usr/lib/uml/modules/
  <ver>`` and a ``modprobe -d <run>/modroot`` wrapper as its kernel ``modprobe`` helper,
  so the kernel's own on-demand loading (IPVS family, schedulers, veth, x_tables
  matches) works without touching the host's ``/lib/modules``.
* XSAVE shim: Debian 12's UML (6.1) dies at its first context switch on hosts with
  AVX-512/AMX ("ptrace set fp regs failed, errno = 14"); ``uml_xstate_shim.c``, compiled
  here and preloaded into linux.uml, fixes that (see the file for why and how).
* The guest powers itself off with reboot(2) when the program ends. The host waits for
  that with a deadline; on timeout (or any error) it kills UML's whole process group --
  the guest's processes are host processes in that group -- and the run directory is
  always removed. A failure carries the console and guest log tails.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UML_BINARY = "/usr/bin/linux.uml"
UML_MODULES = Path("/usr/lib/uml/modules")
REPO = Path(__file__).resolve().parents[2]
SHIM_SOURCE = Path(__file__).with_name("uml_xstate_shim.c")
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC


class UmlError(RuntimeError):
    """UML did not boot, or the guest program wrote no result; the message has logs.
    ``run_dir`` and ``pgid`` say what the run used, so tests can check the clean-up."""

    def __init__(self, message: str, *, run_dir: Path | None = None,
                 pgid: int | None = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.pgid = pgid


@dataclass
class UmlRun:
    result: dict[str, Any]
    console: str
    guest_log: str
    seconds: float


def uml_missing() -> str | None:
    """Why UML cannot be used here, or None when it can (binary, modules, compiler)."""
    if not os.access(UML_BINARY, os.X_OK):
        return f"{UML_BINARY} missing (apt-get install user-mode-linux)"
    if not UML_MODULES.is_dir() or not any(UML_MODULES.iterdir()):
        return f"no UML modules under {UML_MODULES}"
    if shutil.which("modprobe") is None and not os.path.exists("/sbin/modprobe"):
        return "modprobe missing (apt-get install kmod)"
    if _compiler() is None:
        return "no C compiler for the UML XSAVE shim (apt-get install gcc libc6-dev)"
    return None


def _compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _init_script(run: Path, module: str, args: tuple[str, ...]) -> str:
    q = shlex.quote
    python = q(sys.executable)
    program = " ".join(q(a) for a in (sys.executable, "-m", module, str(run), *args))
    poweroff = (f"import ctypes, os; os.sync(); "
                f"ctypes.CDLL(None, use_errno=True).reboot({LINUX_REBOOT_CMD_POWER_OFF})")
    return f"""#!/bin/sh
# PID 1 of a user-mode-linux guest (written by tests/e2e/uml.py). The root file system is
# the host's, read-only; only {run} is writable.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
RUN={q(str(run))}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /run
mount -t hostfs -o "$RUN" none "$RUN" || echo "cannot mount $RUN read-write"
exec >"$RUN/guest.log" 2>&1
echo "guest: kernel $(uname -r), $(grep MemTotal /proc/meminfo)"
mkdir -p "$RUN/modroot/lib/modules"
ln -sfn "{UML_MODULES}/$(uname -r)" "$RUN/modroot/lib/modules/$(uname -r)"
printf '#!/bin/sh\\nexec modprobe -d %s "$@"\\n' "$RUN/modroot" >"$RUN/modprobe"
chmod +x "$RUN/modprobe"
echo "$RUN/modprobe" >/proc/sys/kernel/modprobe
ip link set lo up
cd {q(str(REPO))}
PYTHONPATH={q(str(REPO))} PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME="$RUN" \\
  {program}
echo "guest: program exited $?"
echo "guest: modules: $(cut -d' ' -f1 /proc/modules | tr '\\n' ' ')"
exec {python} -c {q(poweroff)}
"""


def _build_shim(run: Path) -> Path:
    out = run / "uml_xstate_shim.so"
    cc = _compiler()
    if cc is None:
        raise UmlError("no C compiler for the UML XSAVE shim")
    proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(SHIM_SOURCE),
                           "-ldl"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise UmlError(f"cannot build the UML XSAVE shim: {proc.stderr.strip()}")
    return out


def _memory_dir(run: Path) -> str:
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return str(run)


def _wait_exit(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait for UML to exit without reaping it (so its process group id cannot be reused
    before the group is killed). True when it exited in time."""
    fd = os.pidfd_open(proc.pid)
    try:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        return bool(ready)
    finally:
        os.close(fd)


def live_group_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that are still running (zombies excluded:
    they are dead and only wait for init to reap them)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces; the fields after its ")" are fixed.
        fields = stat.rpartition(")")[2].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while live := live_group_members(pgid):
        if time.monotonic() > deadline:
            raise UmlError(f"user-mode-linux processes survive SIGKILL: {live}")
        time.sleep(0.05)  # SIGKILL is asynchronous; this only waits for it to land


def run_python(module: str, *args: str, mem_mb: int = 256, timeout: float = 45
               ) -> UmlRun:
    """Boot UML, run ``python -m module RUN_DIR *args`` as its only program, and return
    the JSON the program wrote to ``RUN_DIR/result.json``. Raises :class:`UmlError` with
    the console and guest log tails when there is no result."""
    missing = uml_missing()
    if missing:
        raise UmlError(f"user-mode-linux unusable: {missing}")
    run = Path(tempfile.mkdtemp(prefix="shoal-uml-"))
    pgid: int | None = None
    started = time.monotonic()
    try:
        shim = _build_shim(run)
        init = run / "init.sh"
        init.write_text(_init_script(run, module, args))
        init.chmod(0o755)
        argv = [UML_BINARY, f"mem={mem_mb}M", "rootfstype=hostfs", "rootflags=/",
                f"init={init}", "con=null", "con0=fd:0,fd:1", "ssl=null",
                f"umid={run.name}", f"uml_dir={run}"]
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "TMPDIR": _memory_dir(run), "LD_PRELOAD": str(shim)}
        console_path = run / "console.log"
        with open(console_path, "wb") as console:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console,
                                    stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            pgid = proc.pid
            try:
                exited = _wait_exit(proc, started + timeout)
            finally:
                # Whatever happened, nothing of this guest may outlive the call: its
                # processes share UML's process group, which is still ours to kill
                # (the leader is not reaped yet, so the group id cannot be reused).
                _kill_group(pgid)
                proc.wait()
        seconds = time.monotonic() - started
        console_text, guest_log = _read(console_path), _read(run / "guest.log")
        result_path = run / "result.json"
        if not exited or not result_path.exists():
            why = (f"timed out after {timeout:.0f} s" if not exited
                   else f"exited {proc.returncode} without a result")
            raise UmlError(f"user-mode-linux {why}\n--- console (tail) ---\n"
                           f"{_tail(console_text)}\n--- guest log (tail) ---\n"
                           f"{_tail(guest_log)}", run_dir=run, pgid=pgid)
        result: dict[str, Any] = json.loads(result_path.read_text())
        return UmlRun(result, console_text, guest_log, seconds)
    except UmlError as exc:
        exc.run_dir, exc.pgid = run, pgid
        raise
    finally:
        shutil.rmtree(run, ignore_errors=True)


def write_result(run_dir: str, result: dict[str, Any]) -> None:
    """For guest programs: write the result atomically (a half-written file never
    parses as a result)."""
    tmp = Path(run_dir) / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True, default=str))
    tmp.replace(Path(run_dir) / "result.json")
