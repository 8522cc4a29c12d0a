"""net.dns: how DnsTable reads a query name -- whole as a service first, then split into
``<service>.<namespace>`` at each dot from the right, so a service or a stack (namespace)
holding dots or underscores (``web.my_app.v1``) resolves, deterministically; namespaces
as written and as their ``crds.names.dns_label`` form. (Wire format: e2e/test_dns.py.)"""

from __future__ import annotations

import ipaddress

from shoal.crds.names import dns_label
from shoal.net.dns import DnsTable, ServiceRecord

A = ipaddress.IPv4Address
NET = "front_net"


def _svc(namespace: str, name: str, vip: str, *tasks: str) -> ServiceRecord:
    return ServiceRecord(namespace, name, "vip", {NET: A(vip)}, {NET: [A(t) for t in tasks]})


def _resolve(table: DnsTable, qname: str) -> tuple[str, set[str]]:
    answer = table.resolve(NET, qname)
    return answer.kind, {str(a) for a in answer.addresses}


def test_service_in_a_dotted_stack_resolves() -> None:
    t = DnsTable()
    t.set(_svc("my_app.v1", "web", "10.254.0.5", "10.0.9.10"))
    assert _resolve(t, "web.my_app.v1") == ("records", {"10.254.0.5"})
    assert _resolve(t, "WEB.My_App.V1.") == ("records", {"10.254.0.5"})
    assert _resolve(t, "tasks.web.my_app.v1") == ("records", {"10.0.9.10"})
    # The stack's DNS-label form, for clients that insist on hostname syntax.
    label = dns_label("my_app.v1")
    assert _resolve(t, f"web.{label}") == ("records", {"10.254.0.5"})
    # Known stack, unknown service: NXDOMAIN, never forwarded upstream.
    assert _resolve(t, "api.my_app.v1") == ("nxdomain", set())
    assert _resolve(t, "web.other.v1") == ("forward", set())


def test_both_parts_dotted() -> None:
    t = DnsTable()
    t.set(_svc("my_app.v1", "hyperf_v1.0", "10.254.0.6"))
    assert _resolve(t, "hyperf_v1.0.my_app.v1") == ("records", {"10.254.0.6"})


def test_ambiguous_split_takes_the_rightmost_dot_first() -> None:
    # "a.b.c" could be service "a.b" in stack "c" or service "a" in stack "b.c": the split
    # at the rightmost dot that names a service wins, whatever order the table was filled.
    for order in (0, 1):
        t = DnsTable()
        records = [_svc("c", "a.b", "10.254.0.1"), _svc("b.c", "a", "10.254.0.2")]
        for r in records[::1 if order else -1]:
            t.set(r)
        assert _resolve(t, "a.b.c") == ("records", {"10.254.0.1"})
        t.remove("c", "a.b")
        assert _resolve(t, "a.b.c") == ("records", {"10.254.0.2"})


def test_whole_name_as_a_service_comes_before_any_split() -> None:
    t = DnsTable()
    t.set(_svc("default", "web.v1", "10.254.0.7"))
    t.set(_svc("v1", "web", "10.254.0.8"))
    assert _resolve(t, "web.v1") == ("records", {"10.254.0.7"})


def test_namespace_label_goes_with_its_last_service() -> None:
    t = DnsTable()
    t.set(_svc("my_app", "web", "10.254.0.5"))
    t.set(_svc("my_app", "api", "10.254.0.9"))
    label = dns_label("my_app")
    t.remove("my_app", "web")
    assert _resolve(t, f"api.{label}") == ("records", {"10.254.0.9"})
    t.remove("my_app", "api")
    assert _resolve(t, f"api.{label}") == ("forward", set())
    t.replace_all([_svc("my_app", "web", "10.254.0.5")])
    assert _resolve(t, f"web.{label}") == ("records", {"10.254.0.5"})


# --- aliases ---

BACK = "back_net"


def _aliased(namespace: str, name: str, vip: str, aliases: dict[str, list[str]],
             mode: str = "vip", tasks: tuple[str, ...] = ()) -> ServiceRecord:
    nets = {NET, BACK}
    return ServiceRecord(namespace, name, mode,  # type: ignore[arg-type]
                         {n: A(vip) for n in nets} if mode == "vip" else {},
                         {n: [A(t) for t in tasks] for n in nets}, aliases)


def test_an_alias_answers_like_the_name_but_only_on_its_network() -> None:
    t = DnsTable()
    t.set(_aliased("shop", "shop_db", "10.254.0.7", {NET: ["db", "Store_1"]},
                   tasks=("10.0.9.3", "10.0.9.4")))
    assert _resolve(t, "db.shop") == ("records", {"10.254.0.7"})
    assert _resolve(t, "tasks.db.shop") == ("records", {"10.0.9.3", "10.0.9.4"})
    assert _resolve(t, "STORE_1.shop") == ("records", {"10.254.0.7"})
    assert _resolve(t, f"{dns_label('Store_1')}.shop") == ("records", {"10.254.0.7"})
    # A client of the stack (its task owns the source address) uses the short name.
    assert t.resolve(NET, "db", A("10.0.9.3")).addresses == (A("10.254.0.7"),)
    # The service is on BACK too, but the alias is not: there it is unknown.
    assert t.resolve(BACK, "db.shop").kind == "nxdomain"
    assert t.resolve(BACK, "shop_db.shop").addresses == (A("10.254.0.7"),)
    t.set(_aliased("shop", "shop_web", "10.254.0.8", {}))
    t.remove("shop", "shop_db")
    assert _resolve(t, "db.shop") == ("nxdomain", set())


def test_a_name_beats_an_alias_and_a_shared_alias_answers_with_all() -> None:
    t = DnsTable()
    t.set(_aliased("s", "web", "10.254.0.1", {}))
    t.set(_aliased("s", "a", "10.254.0.2", {NET: ["web", "cache"]}))
    t.set(_aliased("s", "b", "10.254.0.3", {NET: ["cache"]}, mode="dnsrr",
                   tasks=("10.0.9.8",)))
    assert _resolve(t, "web.s") == ("records", {"10.254.0.1"})
    assert _resolve(t, "cache.s") == ("records", {"10.254.0.2", "10.0.9.8"})
    t.set(_aliased("s", "a", "10.254.0.2", {}))  # its aliases dropped
    assert _resolve(t, "cache.s") == ("records", {"10.0.9.8"})


def test_an_alias_reaches_across_stacks_on_a_shared_network_after_the_own_stack() -> None:
    t = DnsTable()
    t.set(_aliased("shop", "shop_app", "10.254.0.1", {NET: ["app"]}, tasks=("10.0.9.1",)))
    t.set(_aliased("proxy", "proxy_nginx", "10.254.0.2", {NET: ["nginx"]},
                   tasks=("10.0.9.2",)))
    # nginx (stack proxy) finds app (stack shop) by its alias on the shared network.
    assert t.resolve(NET, "app", A("10.0.9.2")).addresses == (A("10.254.0.1"),)
    assert t.resolve(NET, "tasks.app", A("10.0.9.2")).addresses == (A("10.0.9.1"),)
    # A stack's own "app" comes first for its own tasks.
    t.set(_aliased("proxy", "proxy_app", "10.254.0.3", {NET: ["app"]}))
    assert t.resolve(NET, "app", A("10.0.9.2")).addresses == (A("10.254.0.3"),)
    assert t.resolve(BACK, "app", A("10.0.9.2")).kind == "nxdomain"


def test_a_task_on_two_networks_sees_the_services_of_both() -> None:
    # worker is on back (where it asks) and front; redis is on front only, db on back.
    t = DnsTable()
    t.set(ServiceRecord("voting", "voting_db", "vip", {"back": A("10.254.0.1")},
                        {"back": [A("10.0.0.5")]}, {"back": ["db"]}))
    t.set(ServiceRecord("voting", "voting_redis", "vip", {"front": A("10.254.0.2")},
                        {"front": [A("10.0.1.6")]}, {"front": ["redis"]}))
    t.set(ServiceRecord("voting", "voting_worker", "vip", {}, {
        "back": [A("10.0.0.3")], "front": [A("10.0.1.5")]}))
    worker, lonely = A("10.0.0.3"), A("10.0.0.9")
    t.set_clients({("back", worker): ("back", "front"), ("front", A("10.0.1.5")): (
        "back", "front")})
    # From its own network first, then from its other one, with that network's addresses.
    assert t.resolve("back", "db", worker).addresses == (A("10.254.0.1"),)
    assert t.resolve("back", "redis", worker).addresses == (A("10.254.0.2"),)
    assert t.resolve("back", "voting_redis", worker).addresses == (A("10.254.0.2"),)
    assert t.resolve("back", "tasks.redis", worker).addresses == (A("10.0.1.6"),)
    # A client on back only sees back's services.
    assert t.resolve("back", "redis", lonely).kind == "nxdomain"
