"""Interpolation as compose v3 does it: every form of ${...}, $$, and clear errors."""

import pytest

from shoal.compose.errors import ComposeError
from shoal.compose.interpolate import interpolate, interpolate_text

ENV = {"SET": "value", "EMPTY": ""}


def sub(text: str) -> str:
    warnings: list[str] = []
    return interpolate_text(text, ENV, "services.web.image", warnings.append)


@pytest.mark.parametrize(("text", "want"), [
    ("$SET", "value"),
    ("${SET}", "value"),
    ("a${SET}b", "avalueb"),
    ("${UNSET:-dflt}", "dflt"),
    ("${EMPTY:-dflt}", "dflt"),
    ("${UNSET-dflt}", "dflt"),
    ("${EMPTY-dflt}", ""),
    ("${SET:-dflt}", "value"),
    ("$$SET", "$SET"),
    ("price: $$5", "price: $5"),
    ("${SET?must be set}", "value"),
    ("${EMPTY?must be set}", ""),
    ("Host(`${UNSET:-example.com}`)", "Host(`example.com`)"),
    # Docker's unbraced form takes an operator too, up to the next "}".
    ("$UNSET:-dflt", "dflt"),
    ("$SET-name", "value"),
    ("$UNSET-name", "name"),
    ("${SET}-name", "value-name"),
])
def test_forms(text: str, want: str) -> None:
    assert sub(text) == want


def test_unset_variable_is_blank_with_dockers_warning() -> None:
    warnings: list[str] = []
    assert interpolate_text("x${NOPE}y", {}, "k", warnings.append) == "xy"
    assert warnings == ['The "NOPE" variable is not set. Defaulting to a blank string.']


@pytest.mark.parametrize("text", ["${UNSET?set it}", "${EMPTY:?set it}", "${UNSET:?set it}"])
def test_required_variable_missing_names_it_and_the_key(text: str) -> None:
    with pytest.raises(ComposeError, match=r"required variable (UNSET|EMPTY) is missing a "
                       r"value: set it \(in services.web.image\)"):
        sub(text)


@pytest.mark.parametrize("text", ["${}", "${1ABC}", "${A B}", "cost $5"])
def test_invalid_format_is_refused_with_the_key(text: str) -> None:
    with pytest.raises(ComposeError, match=r"invalid interpolation format for services.web"):
        sub(text)


def test_values_are_interpolated_recursively_and_keys_never() -> None:
    data = {"${SET}": ["${SET}", {"k": "$SET"}], "n": 3}
    got = interpolate(data, ENV, "services", lambda _: None)
    assert got == {"${SET}": ["value", {"k": "value"}], "n": 3}
