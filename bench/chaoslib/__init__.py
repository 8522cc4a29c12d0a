"""The chaos harness (issue 16): a multi-manager cluster, a workload, a seeded fault
injector and invariant checkers over every etcd revision; ``bench.chaos`` runs it and
``tests/integration/test_chaos.py`` runs a short version. See docs/chaos.md."""
