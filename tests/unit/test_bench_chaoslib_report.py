"""The chaos report's per-service figures (bench/chaoslib/report.py): what a reader of a
run's output uses to tell a fault's cost from the workload's own churn."""

from __future__ import annotations

from bench.chaoslib.report import Result

REG = "/chaos/registry/services/"


def result(**kw: object) -> Result:
    base: dict[str, object] = dict(
        seed=1, nodes=3, duration=60, faults={"cm-kill": 2}, fault_errors=[], violations=[],
        convergence={}, unconverged=[], revisions=10, watch_reopened=0, gaps=[], ops={},
        failed_commands={}, convergences=3, objects_lost=0)
    base.update(kw)
    return Result(**base)  # type: ignore[arg-type]


def test_convergence_after_the_last_fault_is_shown_cluster_wide_and_per_service() -> None:
    lines = result(convergence={f"{REG}default/web": 0.0, f"{REG}default/api": 4.5,
                                f"{REG}chaos/chaos_front": 1.25}).lines()
    assert "cluster converged 4.50 s after the last fault (every service at its spec)" \
        in lines
    [per] = [line for line in lines if line.startswith("  per service: ")]
    # slowest first, so the service that held the cluster up leads the line
    assert per == ("  per service: default/api 4.50 s, chaos/chaos_front 1.25 s, "
                   "default/web 0.00 s")


def test_a_service_left_unconverged_is_not_hidden_by_the_cluster_line() -> None:
    lines = result(convergence={f"{REG}default/web": 0.0},
                   unconverged=["default/api: replicas 3, ..."]).lines()
    assert "cluster NOT converged: 1 services not at their spec at the end (below)" in lines
    assert not [line for line in lines if line.startswith("cluster converged")]


def test_recovery_per_service_counts_each_service_a_fault_left_off_its_spec() -> None:
    lines = result(
        recoveries={"cm-kill cm-0 @0s": 9.0, "cm-kill cm-1 @5s": 2.0},
        service_recoveries={("cm-kill cm-0 @0s", f"{REG}default/api"): 1.0,
                             ("cm-kill cm-0 @0s", f"{REG}default/web"): 9.0,
                             ("cm-kill cm-1 @5s", f"{REG}default/api"): 3.0,
                             ("cm-kill cm-1 @5s", f"{REG}default/batch"): None}).lines()
    [head] = [line for line in lines if line.startswith("recovery per service ")]
    assert head.startswith("recovery per service (3/4 (fault, service) pairs back): ")
    assert "max 9.00 s" in head
    assert "  default/api: 2 faults, p50 2.00 s, max 3.00 s" in lines
    assert "  not back: default/batch after cm-kill cm-1 @5s" in lines


def test_a_run_whose_faults_left_every_service_at_its_spec_says_so() -> None:
    lines = result(recoveries={"cm-kill cm-0 @0s": 0.0}).lines()
    assert "recovery per service: no fault left a service away from its spec" in lines
