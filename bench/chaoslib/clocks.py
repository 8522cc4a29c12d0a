"""Per-process wall-clock jumps for the chaos harness, through libfaketime.

A time namespace can offset only the monotonic and boot clocks, so a node's wall clock
cannot be stepped by the kernel alone; libfaketime (``LD_PRELOAD``) can, per process.
Each faked process (agents with their heartbeat and task children, controller-managers)
is given its own ``FAKETIME_TIMESTAMP_FILE`` holding a relative offset ("+0" at start)
and re-reads it every second (``FAKETIME_CACHE_DURATION=1``; ``FAKETIME_NO_CACHE`` would
stat the file on every clock read). A ``clock-jump`` fault writes an offset of ±5 min to
±2 h into one process's file and "+0" back when it is put back: the step an NTP daemon
makes when it finds a clock far off, in either direction.

Only the wall clock moves (``FAKETIME_DONT_FAKE_MONOTONIC=1``): a real host's monotonic
clock never jumps, and asyncio's timers run on it. That setting trips a libfaketime
0.9.10 bug in monotonic absolute sleeps (every ``time.sleep`` of Python 3.11), so a
small library (``clockshim.c``, compiled here with the system's C compiler) is loaded
ahead of libfaketime and sends those sleeps straight to the kernel. etcd members (Go,
static) are not faked: their clocks are the reference the others drift from.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

#: Where Debian's libfaketime package puts the library.
LIBRARY_DIRS = (Path("/usr/lib/x86_64-linux-gnu/faketime"), Path("/usr/lib/faketime"),
                Path("/usr/local/lib/faketime"))
SHIM_SOURCE = Path(__file__).with_name("clockshim.c")
#: A jump's size in seconds, drawn uniformly, sign drawn separately.
JUMP = (300.0, 7200.0)


def library() -> Path | None:
    for d in LIBRARY_DIRS:
        if (d / "libfaketime.so.1").exists():
            return d / "libfaketime.so.1"
    return None


def unavailable() -> str | None:
    """Why clock jumps cannot be injected here, or None when they can."""
    if library() is None:
        return "libfaketime is not installed (apt-get install faketime libfaketime)"
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return "no C compiler for the libfaketime sleep shim (apt-get install gcc libc6-dev)"
    return None


class Clocks:
    """The faked processes' offset files, under ``workdir/clocks``."""

    def __init__(self, workdir: Path) -> None:
        why = unavailable()
        if why is not None:
            raise RuntimeError(f"clock jumps: {why}")
        lib = library()
        assert lib is not None
        self.dir = workdir / "clocks"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shim = self.dir / "clockshim.so"
        cc = shutil.which("cc") or shutil.which("gcc")
        assert cc is not None
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(self.shim), str(SHIM_SOURCE)],
                       check=True, capture_output=True)
        self.lib = lib
        self.offsets: dict[str, float] = {}

    def file(self, name: str) -> Path:
        return self.dir / f"{name}.rc"

    def env(self, name: str) -> dict[str, str]:
        """The environment that fakes process ``name``'s wall clock (its offset kept)."""
        path = self.file(name)
        if not path.exists():
            self.set(name, 0.0)
        return {"LD_PRELOAD": f"{self.shim} {self.lib}",
                "FAKETIME_TIMESTAMP_FILE": str(path),
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                "FAKETIME_CACHE_DURATION": "1"}

    def set(self, name: str, offset: float) -> None:
        """Step ``name``'s wall clock to real time + ``offset`` seconds (atomically: a
        reader never sees a half-written file)."""
        path = self.file(name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{'+' if offset >= 0 else '-'}{abs(int(offset))}\n")
        tmp.replace(path)
        self.offsets[name] = offset
