"""shoal/cli/stackobjects.py: what a stack's objects are used by, so rm and --prune keep
what a service outside them still names."""

from __future__ import annotations

from shoal.cli import stackobjects
from shoal.crds import resource


def service(namespace: str, name: str, networks: list[str],
            secrets: list[str]) -> resource.Resource:
    return resource.Resource(
        kind="Service", metadata=resource.ObjectMeta(name=name, namespace=namespace),
        spec={"networks": networks,
              "template": {"image": "x", "secrets": [{"source": s} for s in secrets]}})


def test_users_of_names_every_service_per_network_and_secret() -> None:
    users = stackobjects.users_of([
        service("web", "web_api", ["web_default", "shared"], ["web_pw"]),
        service("other", "other_proxy", ["shared"], []),
    ])
    assert users == {("network", "web_default", None): ["web/web_api"],
                     ("network", "shared", None): ["web/web_api", "other/other_proxy"],
                     ("secret", "web_pw", "web"): ["web/web_api"]}


def test_the_stack_selector_matches_its_label_only() -> None:
    sel = stackobjects.selector("web")
    assert sel.matches({stackobjects.NS_LABEL: "web"})
    assert not sel.matches({stackobjects.NS_LABEL: "web2"})
    assert not sel.matches({})
