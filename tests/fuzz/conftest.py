"""Hypothesis settings for the fuzz tests: derandomized (the same cases on every run, so CI
is deterministic), no example database, no per-case deadline (a case that reaches etcd
takes milliseconds, one that starts swctl a second), and few enough cases that the whole
folder stays well under a minute. ``bench/fuzz.py`` runs the same surfaces at 10,000+."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fuzz", derandomize=True, database=None, deadline=None, print_blob=False,
    suppress_health_check=list(HealthCheck))
