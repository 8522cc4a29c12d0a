"""The run's result and how it prints: faults by kind, violations, convergence figures."""

from __future__ import annotations

import dataclasses
import statistics

from bench.chaoslib.invariants import Violation


@dataclasses.dataclass
class Result:
    seed: int
    nodes: int
    duration: float
    faults: dict[str, int]
    fault_errors: list[str]
    violations: list[Violation]
    convergence: dict[str, float]  # service -> seconds after the last fault
    unconverged: list[str]
    revisions: int
    watch_reopened: int
    gaps: list[tuple[int, int]]
    ops: dict[str, int]
    failed_commands: dict[str, int]
    convergences: int  # times a service came (back) to its spec during the run
    objects_lost: int
    #: per fault put back: seconds until every service was at its spec again (None: not
    #: within the watch, or the run ended first)
    recoveries: dict[str, float | None] = dataclasses.field(default_factory=dict)
    #: link faults: seconds from the link's return to its replaced tasks stopped
    stale_stopped: dict[str, float] = dataclasses.field(default_factory=dict)
    #: partitions: the node's unended tasks as shown just before the link came back
    shown_before_heal: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    #: (fault, service) -> seconds from the fault put back until that service, not at its
    #: spec then, first was again (None: not seen)
    service_recoveries: dict[tuple[str, str], float | None] = dataclasses.field(
        default_factory=dict)
    slow_recoveries: list[str] = dataclasses.field(default_factory=list)  # over 10 s
    netns: bool = False
    netem_delay: bool | None = None  # False: the kernel has no netem, loss only
    kinds: tuple[str, ...] = ()
    hold: tuple[float, float] = (0.5, 5.0)
    #: --etcd-quota (bytes) and, per etcd-full fault, seconds from the junk's deletion
    #: until etcd accepted writes again (None: not seen)
    etcd_quota: int | None = None
    writable_after: dict[str, float | None] = dataclasses.field(default_factory=dict)
    process_nodes: int = 0
    clock_jumps: list[str] = dataclasses.field(default_factory=list)  # "victim +N s"

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())

    def percentile(self, q: float, values: list[float] | None = None) -> float:
        values = sorted(self.convergence.values() if values is None else values)
        if not values:
            return 0.0
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] \
            if q < 100 else values[-1]

    def service_recovery_lines(self) -> list[str]:
        """Per service a fault left away from its spec: how long until it was back."""
        if not self.service_recoveries:
            return ["recovery per service: no fault left a service away from its spec"]
        vals = [v for v in self.service_recoveries.values() if v is not None]
        out = [f"recovery per service ({len(vals)}/{len(self.service_recoveries)} "
               f"(fault, service) pairs back): p50 {self.percentile(50, vals):.2f} s, p99 "
               f"{self.percentile(99, vals):.2f} s, max {max(vals, default=0.0):.2f} s "
               "(fault put back to that service first at its spec)"]
        by_service: dict[str, list[float]] = {}
        for (_, svc), v in self.service_recoveries.items():
            if v is not None:
                by_service.setdefault(svc, []).append(v)
        out.extend(f"  {self.short(svc)}: {len(v)} faults, p50 {self.percentile(50, v):.2f} "
                   f"s, max {max(v):.2f} s" for svc, v in sorted(by_service.items()))
        out.extend(f"  not back: {self.short(svc)} after {fault}"
                   for (fault, svc), v in self.service_recoveries.items() if v is None)
        return out

    @staticmethod
    def short(key: str) -> str:
        """``<registry>/services/NS/NAME`` as ``NS/NAME``."""
        return "/".join(key.rstrip("/").split("/")[-2:])

    def lines(self) -> list[str]:
        out = [f"seed {self.seed}: {self.nodes} nodes ({self.process_nodes} process-runtime), "
               f"{self.duration:.0f} s of faults, "
               f"{self.total_faults} faults: "
               + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))]
        out.append("workload: " + ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items()))
                   + f"; swctl commands retried: {sum(self.failed_commands.values())}")
        out.append(f"services came back to their spec {self.convergences} times")
        out.append(f"watched {self.revisions} revisions (watch reopened "
                   f"{self.watch_reopened} times, {len(self.gaps)} compacted gaps)")
        if self.convergence:
            out.append(f"cluster converged {max(self.convergence.values()):.2f} s after the "
                       "last fault (every service at its spec)" if not self.unconverged else
                       f"cluster NOT converged: {len(self.unconverged)} services not at "
                       "their spec at the end (below)")
            out.append(f"convergence after the last fault per service, over "
                       f"{len(self.convergence)} services: p50 {self.percentile(50):.2f} s, "
                       f"p99 {self.percentile(99):.2f} s, max "
                       f"{max(self.convergence.values()):.2f} s (0: already converged when "
                       "the last fault was put back)")
            out.append("  per service: " + ", ".join(
                f"{self.short(svc)} {t:.2f} s" for svc, t in sorted(
                    self.convergence.items(), key=lambda item: (-item[1], item[0]))))
        recovered = [v for v in self.recoveries.values() if v is not None]
        if self.recoveries:
            kinds = sorted({k.split()[0] for k in self.recoveries})
            for kind in ["all", *kinds] if len(kinds) > 1 else kinds:
                vals = [v for k, v in self.recoveries.items() if v is not None
                        and (kind == "all" or k.split()[0] == kind)]
                total = sum(1 for k in self.recoveries if kind == "all"
                            or k.split()[0] == kind)
                if vals:
                    out.append(f"recovery per fault ({kind}, {len(vals)}/{total} recovered): "
                               f"p50 {self.percentile(50, vals):.2f} s, p99 "
                               f"{self.percentile(99, vals):.2f} s, max {max(vals):.2f} s "
                               "(fault put back to every service at its spec)")
            out.extend(f"  slow recovery: {line}" for line in self.slow_recoveries)
            out.extend(self.service_recovery_lines())
            if self.stale_stopped:
                vals = list(self.stale_stopped.values())
                out.append(f"replaced tasks stopped after the link came back "
                           f"({len(vals)} faults): p50 {self.percentile(50, vals):.2f} s, "
                           f"p99 {self.percentile(99, vals):.2f} s, max {max(vals):.2f} s")
            if self.shown_before_heal:
                shown = [s for states in self.shown_before_heal.values()
                         for s in states.values()]
                out.append(f"tasks on a partitioned node just before it came back: "
                           f"{shown.count('unknown')} of {len(shown)} shown unknown")
            out.extend(self._space_lines())
            if self.netem_delay is False:
                out.append("netem: this kernel has no sch_netem; 30 % loss only "
                           "(nftables), no delay")
            missing = [k for k, v in self.recoveries.items() if v is None]
            if missing and len(recovered) < len(self.recoveries):
                out.append(f"faults with no recovery seen: {', '.join(missing[:10])}")
        if self.clock_jumps:
            out.append(f"clock jumps: {', '.join(self.clock_jumps)}")
        if self.unconverged:
            out.append("NOT CONVERGED:")
            out.extend(f"  {line}" for line in self.unconverged)
        out.append(f"violations: {len(self.violations)} (objects lost: {self.objects_lost})")
        out.extend(f"  {v}" for v in self.violations[:50])
        out.extend(f"  fault error: {e}" for e in self.fault_errors)
        replay = (f"replay: python -m bench.chaos --seed {self.seed} --duration "
                  f"{self.duration:.0f} --nodes {self.nodes}")
        if self.netns:
            replay += " --netns"
        if self.process_nodes:
            replay += f" --process-nodes {self.process_nodes}"
        if self.kinds:
            replay += f" --kinds {','.join(self.kinds)}"
        replay += f" --hold {self.hold[0]:g} {self.hold[1]:g}"
        if self.etcd_quota:
            replay += f" --etcd-quota {self.etcd_quota // (1024 * 1024)}"
        out.append(replay)
        return out

    def _space_lines(self) -> list[str]:
        """etcd-full: how long after the junk was deleted etcd took writes again."""
        if not self.writable_after:
            return []
        vals = [v for v in self.writable_after.values() if v is not None]
        line = (f"etcd writable again after the junk was deleted ({len(vals)}/"
                f"{len(self.writable_after)} etcd-full faults)")
        if vals:
            line += (f": p50 {self.percentile(50, vals):.2f} s, p99 "
                     f"{self.percentile(99, vals):.2f} s, max {max(vals):.2f} s")
        return [line]
