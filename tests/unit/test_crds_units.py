"""Durations, sizes and CPU counts: both the Docker and the Kubernetes spellings."""

from __future__ import annotations

import pytest

from shoal.crds import units


@pytest.mark.parametrize(("text", "seconds"), [
    ("1m30s", 90.0),
    ("500ms", 0.5),
    ("1h", 3600.0),
    ("2.5s", 2.5),
    ("0", 0.0),
    ("0s", 0.0),
    ("1us", 1e-6),
    ("1\u00b5s", 1e-6),
    ("10ns", 1e-8),
    ("1h2m3.5s", 3723.5),
    ("1.5h", 5400.0),
    ("30", 30.0),
    (" 5s ", 5.0),
    (5, 5.0),
    (0.25, 0.25),
])
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert units.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "hint"), [
    ("5x", "use a number with a unit such as 500ms, 5s, 1m30s"),
    ("", "use a number with a unit"),
    ("s", "use a number with a unit"),
    ("1m30", 'missing unit after "30"'),
    ("3d", "use hours such as 24h"),
    ("-1s", "must not be negative"),
    (-1, "must not be negative"),
    (True, "use a number with a unit"),
])
def test_parse_duration_rejects(text: str | int, hint: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as err:
        units.parse_duration(text)
    assert hint in str(err.value)


def test_parse_duration_error_message_is_exact() -> None:
    with pytest.raises(ValueError) as err:
        units.parse_duration("5x")
    assert str(err.value) == ('invalid duration "5x": use a number with a unit such as 500ms, '
                              "5s, 1m30s")


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"),
    (90, "1m30s"),
    (0.5, "500ms"),
    (3600, "1h0m0s"),
    (3661.25, "1h1m1.25s"),
    (5, "5s"),
    (0.0015, "1.5ms"),
    (1.5e-6, "1.5us"),
    (1e-8, "10ns"),
    (-90, "-1m30s"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert units.format_duration(seconds) == text


@pytest.mark.parametrize("text", ["1m30s", "500ms", "1h0m0s", "2.5s", "1us", "10ns", "0s"])
def test_duration_round_trip(text: str) -> None:
    assert units.format_duration(units.parse_duration(text)) == text


@pytest.mark.parametrize(("text", "size"), [
    ("64Mi", 64 * 1024**2),
    ("1Gi", 1024**3),
    ("512Ki", 512 * 1024),
    ("1G", 1000**3),
    ("512k", 512_000),
    ("2K", 2000),
    ("1024", 1024),
    (1024, 1024),
    ("64m", 64 * 1024**2),   # Docker's --memory 64m
    ("1g", 1024**3),
    ("64mb", 64 * 1024**2),
    ("64MB", 64 * 1024**2),
    ("512kb", 512 * 1024),
    ("100b", 100),
    ("1.5Gi", 1536 * 1024**2),
    ("0.5Ki", 512),
    ("1.0001", 2),           # fractions round up, as Kubernetes does
])
def test_parse_size(text: str | int, size: int) -> None:
    assert units.parse_size(text) == size


@pytest.mark.parametrize(("text", "hint"), [
    ("64X", 'unknown unit "X"'),
    ("lots", "use bytes or a number with a unit"),
    ("-1Mi", "must not be negative"),
    (-5, "must be a number of bytes >= 0"),
    ("", "use bytes or a number with a unit"),
])
def test_parse_size_rejects(text: str | int, hint: str) -> None:
    with pytest.raises(ValueError, match="invalid size") as err:
        units.parse_size(text)
    assert hint in str(err.value)


def test_format_size() -> None:
    assert units.format_size(64 * 1024**2) == "64Mi"
    assert units.format_size(1000) == "1000"
    assert units.format_size(0) == "0"


@pytest.mark.parametrize(("value", "cpus"), [
    (0.5, 0.5), ("0.5", 0.5), ("500m", 0.5), (2, 2.0), ("2", 2.0), ("1500m", 1.5),
])
def test_parse_cpus(value: str | float, cpus: float) -> None:
    assert units.parse_cpus(value) == pytest.approx(cpus)


@pytest.mark.parametrize("value", ["half", "-1", -0.5, "5x", True, ""])
def test_parse_cpus_rejects(value: str | float) -> None:
    with pytest.raises(ValueError, match="invalid CPU count"):
        units.parse_cpus(value)
