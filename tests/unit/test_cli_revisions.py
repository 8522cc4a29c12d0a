"""shoal/cli/revisions.py: the history table, one revision as YAML, and which rollback
request may be written — with errors that name the revisions there are."""

from __future__ import annotations

import datetime

import pytest
import yaml

from shoal.cli import errors, revisions
from shoal.crds import updatemeta as um
from tests.unit.cli_support import revision, service, three_revisions

NOW = datetime.datetime(2024, 5, 1, 12, 5, 0, tzinfo=datetime.UTC)


def test_history_rows_oldest_first_with_the_current_one_marked() -> None:
    assert revisions.history_rows(three_revisions(), NOW) == [
        ["1", "swctl service create --name web nginx:1", "nginx:1", "5m"],
        ["2", "swctl apply -f web.yaml", "nginx:2", "5m"],
        ["3 (current)", "<none>", "nginx:3", "5m"]]


def test_malformed_entries_are_skipped_not_fatal() -> None:
    svc = service(revisions=["junk", {"revision": "two"}, revision(4, "nginx:4")])
    assert [r[0] for r in revisions.history_rows(svc, NOW)] == ["4"]


def test_one_revision_as_yaml_and_an_unknown_one_names_those_there_are() -> None:
    data = yaml.safe_load(revisions.revision_yaml(three_revisions(), 2))
    assert data["revision"] == 2 and data["current"] is False
    assert data["spec"] == {"template": {"image": "nginx:2"}}
    assert data["changeCause"] == "swctl apply -f web.yaml"
    with pytest.raises(errors.CliError) as caught:
        revisions.revision_yaml(three_revisions(), 7)
    assert str(caught.value) == ("service/web has no revision 7: its revisions are 1, 2, 3 "
                                 "(see swctl rollout history service/web)")


def test_rollback_targets() -> None:
    svc = three_revisions()
    assert revisions.rollback_target(svc, None) == um.PREVIOUS
    assert revisions.rollback_target(svc, 0) == um.PREVIOUS  # kubectl's 0
    assert revisions.rollback_target(svc, 1) == "1"
    with pytest.raises(errors.CliError, match="already runs revision 3"):
        revisions.rollback_target(svc, 3)
    with pytest.raises(errors.CliError, match="has no revision 9: its revisions are 1, 2, 3"):
        revisions.rollback_target(svc, 9)
    only = service(revisions=[revision(1, "nginx:1")], revision=1)
    with pytest.raises(errors.CliError, match="no previous revision to roll back to"):
        revisions.rollback_target(only, None)
    with pytest.raises(errors.CliError, match="no recorded revisions yet"):
        revisions.rollback_target(service(), None)
