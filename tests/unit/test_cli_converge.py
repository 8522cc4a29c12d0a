"""shoal/cli/converge.py's duration flags, as argparse types."""

from __future__ import annotations

import argparse

import pytest

from shoal.cli import converge


@pytest.mark.parametrize("text", ["99999999999999999999", "1e20", "inf", "nan", "-1",
                                  "604801"])
def test_durations_that_are_not_a_sane_number_of_seconds_are_refused(text: str) -> None:
    """Fuzzing found it: ``--request-timeout 99999999999999999999`` overflowed grpc's
    deadline and every request waited for ever; ``nan`` and ``-1`` were taken silently."""
    with pytest.raises(argparse.ArgumentTypeError, match=f'invalid duration "{text}"'):
        converge.positive_seconds_arg(text)


def test_request_timeout_must_be_positive_but_waits_may_be_zero() -> None:
    assert converge.seconds_arg("0") == 0.0
    assert converge.seconds_arg("1.5s") == 1.5
    assert converge.positive_seconds_arg("604800") == 604800.0
    with pytest.raises(argparse.ArgumentTypeError, match="must be > 0"):
        converge.positive_seconds_arg("0")
