"""cli.common.split_refs: kubectl's TYPE/NAME, with Docker's dotted names kept whole."""

from __future__ import annotations

import pytest

from shoal.cli import common, errors


def test_type_slash_name_splits_at_the_first_slash_only() -> None:
    assert common.split_refs("service/hyperf_v1.0", []) == ("service", ["hyperf_v1.0"])
    assert common.split_refs("svc/a", ["svc/b_c.d"]) == ("svc", ["a", "b_c.d"])
    assert common.split_refs("widgets.example.com/w1", []) == ("widgets.example.com", ["w1"])


def test_kind_and_names_pass_through() -> None:
    assert common.split_refs("service", ["hyperf_v1.0"]) == ("service", ["hyperf_v1.0"])


@pytest.mark.parametrize("refs", [["service/a", "network/b"], ["service/a", "b"],
                                  ["service/"]])
def test_mixed_or_empty_refs_are_refused(refs: list[str]) -> None:
    with pytest.raises(errors.CliError, match=r"give TYPE/NAME\.\.\. of one kind"):
        common.split_refs(refs[0], refs[1:])
