"""When the dataplane's next periodic pass is due: the safety net paced by its own cost. Pure.

The periodic pass (``dataplane.Dataplane``: the full ``netplan.plan``, its comparison with
the incremental index, the thorough overlay sync and the balancer's ``repair``) is
O(cluster): at 10,000 services x 10 tasks it costs 8-19 s, so a fixed 30 s interval
spent up to half a core on a net that, on a healthy node, finds nothing. Its interval is
therefore ``max(every, cost / budget)``: a pass that costs more than ``budget`` (a share
of one CPU, 3 % by default) of the interval pushes the next one further out, so the net
costs at most about ``budget`` of a CPU however big the cluster is; a small cluster keeps
the ``every`` floor (30 s).

The cost of a pass is the larger of its wall time and the CPU time the process spent
meanwhile: the CPU time is what the budget is about; the wall time also counts the
kernel's and the helper processes' work (``nft``, ``bridge -j``) done for the pass, and
while the pass runs it holds the dataplane's lock, so changes wait behind it. A pass
slowed by a loaded machine backs off, which a loaded machine wants. One stalled pass (a
paused VM) cannot put the net off indefinitely: the interval is capped at ``ceiling``
(unless ``every`` itself is longer).

Evidence that something is wrong brings the next check back to the ``every`` floor,
whatever the pass cost: a pass that found drift (kernel state changed behind Shoal's
back, or the index differing from the full plan) or a pass that failed. The net costs
more exactly while it finds work, and goes back to its budget after one quiet pass.
"""

from __future__ import annotations

import dataclasses

BUDGET = 0.03  # share of one CPU the periodic pass may cost, on average
CEILING = 600.0  # seconds: the longest interval a costly pass can set


@dataclasses.dataclass(frozen=True)
class Cost:
    """What one full pass took: seconds of wall time and of the process's CPU time."""

    wall: float
    cpu: float

    @property
    def seconds(self) -> float:
        return max(self.wall, self.cpu)


@dataclasses.dataclass(frozen=True)
class Interval:
    """The chosen wait until the next periodic pass, and why (for the log)."""

    seconds: float
    why: str  # "floor": every; "cost": cost / budget; "ceiling"; "drift"; "failed"


class ResyncPacer:
    """Holds when the next periodic pass is due (monotonic seconds). ``every``: the floor
    interval (the dataplane's ``resync_every``); ``now``: the start, the first pass
    being due ``every`` later until a full pass's cost says otherwise."""

    def __init__(self, every: float, now: float, *, budget: float = BUDGET,
                 ceiling: float = CEILING) -> None:
        if every <= 0 or budget <= 0:
            raise ValueError(f"resync interval ({every}) and budget ({budget}) must be "
                             "positive")
        self.every = every
        self.budget = budget
        self.ceiling = max(ceiling, every)
        self.interval = Interval(every, "floor")
        self.due = now + every

    def choose(self, cost: Cost, *, drift: bool = False) -> Interval:
        """The interval after a full pass that cost ``cost`` (``drift``: it found some)."""
        if drift:
            return Interval(self.every, "drift")
        paced = cost.seconds / self.budget
        if paced <= self.every:
            return Interval(self.every, "floor")
        if paced >= self.ceiling:
            return Interval(self.ceiling, "ceiling")
        return Interval(paced, "cost")

    def passed(self, now: float, cost: Cost, *, drift: bool = False) -> Interval:
        """A full pass (periodic or start-up) ended at ``now``: the next is due one
        chosen interval later."""
        self.interval = self.choose(cost, drift=drift)
        self.due = now + self.interval.seconds
        return self.interval

    def failed(self, now: float) -> None:
        """A pass failed: the next periodic one comes no later than ``every`` from now
        (a failed periodic pass stays due, and is retried as soon as the loop's back-off
        allows)."""
        if self.due > now + self.every:
            self.interval = Interval(self.every, "failed")
            self.due = now + self.every

    def wait(self, now: float) -> float:
        """Seconds until the next periodic pass is due (0: it is)."""
        return max(0.0, self.due - now)

    def is_due(self, now: float) -> bool:
        return now >= self.due
