"""The example units in deploy/systemd/ are what units.py renders today (for the
example manager of deploy/systemd/examples.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).parents[2] / "deploy" / "systemd" / "examples.py"


def test_the_example_units_are_current() -> None:
    spec = importlib.util.spec_from_file_location("deploy_systemd_examples", EXAMPLES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert sorted(module.examples()) == ["shoal-agent.service",
                                         "shoal-controller-manager.service",
                                         "shoal-etcd.service", "shoal-role-watch.service"]
    assert module.main(["--check"]) == 0, "run python deploy/systemd/examples.py"
