"""The mounted-digests annotation: which keys a service mounts, reading and writing it."""

from __future__ import annotations

from shoal.crds import mountdigests, resource


def test_mounted_keys_once_each_secrets_first() -> None:
    svc = resource.new("Service", "web", "default", {"template": {
        "image": "x", "configs": [{"source": "site"}],
        "secrets": [{"source": "db"}, {"source": "db", "target": "again"}, {"bad": 1}]}})
    assert mountdigests.mounted(svc) == ["secret/db", "config/site"]
    assert mountdigests.mounted(resource.new("Service", "w", "default", {})) == []


def test_record_round_trips_and_bad_values_read_as_absent() -> None:
    svc = resource.new("Service", "web", "default", {})
    assert mountdigests.recorded(svc) is None
    text = mountdigests.render({"secret/b": "2", "config/a": "1"})
    assert text == '{"config/a":"1","secret/b":"2"}'
    svc.metadata.annotations[mountdigests.MOUNTED_DIGESTS] = text
    assert mountdigests.recorded(svc) == {"config/a": "1", "secret/b": "2"}
    for bad in ("[1]", '{"a": 1}', "{"):
        svc.metadata.annotations[mountdigests.MOUNTED_DIGESTS] = bad
        assert mountdigests.recorded(svc) is None
