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

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())

    def percentile(self, q: float) -> float:
        values = sorted(self.convergence.values())
        if not values:
            return 0.0
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] \
            if q < 100 else values[-1]

    def lines(self) -> list[str]:
        out = [f"seed {self.seed}: {self.nodes} nodes, {self.duration:.0f} s of faults, "
               f"{self.total_faults} faults: "
               + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))]
        out.append("workload: " + ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items()))
                   + f"; swctl commands retried: {sum(self.failed_commands.values())}")
        out.append(f"services came back to their spec {self.convergences} times")
        out.append(f"watched {self.revisions} revisions (watch reopened "
                   f"{self.watch_reopened} times, {len(self.gaps)} compacted gaps)")
        if self.convergence:
            out.append(f"convergence after the last fault over {len(self.convergence)} "
                       f"services: p50 {self.percentile(50):.2f} s, p99 "
                       f"{self.percentile(99):.2f} s, max {max(self.convergence.values()):.2f} s"
                       " (0: already converged when the last fault was put back)")
        if self.unconverged:
            out.append("NOT CONVERGED:")
            out.extend(f"  {line}" for line in self.unconverged)
        out.append(f"violations: {len(self.violations)} (objects lost: {self.objects_lost})")
        out.extend(f"  {v}" for v in self.violations[:50])
        out.extend(f"  fault error: {e}" for e in self.fault_errors)
        out.append(f"replay: python -m bench.chaos --seed {self.seed} --duration "
                   f"{self.duration:.0f} --nodes {self.nodes}")
        return out
