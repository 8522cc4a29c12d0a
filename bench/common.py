"""What every benchmark prints with: a flushed line, and the machine's load average (the
machine is shared with other sessions, so every recorded figure says how busy it was)."""

from __future__ import annotations

import pathlib


def say(text: str) -> None:
    print(text, flush=True)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them."""
    return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])
