"""shoal.net.lb_nftables: generated nftables rulesets, without a kernel."""

from __future__ import annotations

from shoal.net.lb import VirtualService
from shoal.net.lb_nftables import (
    MASQ_MARK,
    lb_chain,
    render_chain,
    render_change,
    render_full,
    render_removal,
    render_repair,
)


def svc(vip: str | None, port: int, backends: list[str], proto: str = "tcp"
        ) -> VirtualService:
    return VirtualService.make(vip, port, proto, backends)  # type: ignore[arg-type]


def test_full_ruleset() -> None:
    web = svc("10.254.0.5", 80, ["10.0.9.11:8080", "10.0.9.10:8080"])
    dns = svc("10.254.0.5", 53, ["10.0.9.20:53"], "udp")
    empty = svc("10.254.0.6", 80, [])
    mesh = svc(None, 30080, ["10.255.0.5:80", "10.255.0.6:80", "10.255.0.7:80"])
    script = render_full([web, dns, empty, mesh])
    lines = script.splitlines()
    # Atomic replacement of our own table only.
    assert lines[:3] == ["table ip shoal {}", "delete table ip shoal", "table ip shoal {"]
    assert "chain lb_tcp_2 { meta mark set meta mark | 0x10000000 dnat ip to ip daddr . " \
           "tcp dport . numgen random mod 2 map @be_tcp; }" in script
    assert "chain lb_udp_1 {" in script and "chain np_tcp_3 {" in script
    assert "chain lb_tcp_0" not in script  # a service without backends has no chain
    # Backends sorted, numbered from 0; dispatch by VIP . proto . port.
    assert ("add element ip shoal be_tcp { 10.254.0.5 . 80 . 0 : 10.0.9.10 . 8080, "
            "10.254.0.5 . 80 . 1 : 10.0.9.11 . 8080 }") in lines
    assert ("add element ip shoal svc { 10.254.0.5 . tcp . 80 : goto lb_tcp_2, "
            "10.254.0.5 . udp . 53 : goto lb_udp_1 }") in lines
    assert "add element ip shoal np { tcp . 30080 : goto np_tcp_3 }" in lines
    assert ("add element ip shoal np_tcp { 30080 . 0 : 10.255.0.5 . 80, "
            "30080 . 1 : 10.255.0.6 . 80, 30080 . 2 : 10.255.0.7 . 80 }") in lines
    # Every VIP (also the one without backends) is in the reject set.
    assert "add element ip shoal vips { 10.254.0.5, 10.254.0.6 }" in lines
    # Masquerade of marked traffic, clearing the mark first; published ports only for
    # local destinations; chains come before elements.
    m = f"{MASQ_MARK:#x}"
    assert f"meta mark & {m} == {m} meta mark set meta mark ^ {m} masquerade" in script
    assert "fib daddr type local ip daddr != 127.0.0.0/8" in script
    assert max(i for i, ln in enumerate(lines) if "chain" in ln) < min(
        i for i, ln in enumerate(lines) if ln.startswith("add element"))


def test_full_ruleset_chunks_large_element_lists() -> None:
    services = [svc(f"10.254.{i // 250}.{i % 250 + 1}", 80, [f"10.0.0.{j + 1}:80"
                                                            for j in range(10)])
                for i in range(500)]
    lines = render_full(services).splitlines()
    be = [ln for ln in lines if ln.startswith("add element ip shoal be_tcp")]
    assert len(be) == 3 and sum(ln.count(" : ") for ln in be) == 5000


def test_endpoint_change_touches_only_that_service() -> None:
    old = svc("10.254.0.5", 80, ["10.0.9.10:8080", "10.0.9.11:8080", "10.0.9.12:8080"])
    new = svc("10.254.0.5", 80, ["10.0.9.10:8080", "10.0.9.12:8080"])
    chains = {"lb_tcp_3"}
    refs = {old.vip: 1}
    lines = render_change(old, new, chains=chains, vip_refs=refs)  # type: ignore[dict-item]
    assert lines == [
        "add chain ip shoal lb_tcp_2",
        "add rule ip shoal lb_tcp_2 " + render_chain("lb_tcp_2"),
        "delete element ip shoal svc { 10.254.0.5 . tcp . 80 }",
        "delete element ip shoal be_tcp { 10.254.0.5 . 80 . 1, 10.254.0.5 . 80 . 2 }",
        "add element ip shoal be_tcp { 10.254.0.5 . 80 . 1 : 10.0.9.12 . 8080 }",
        "add element ip shoal svc { 10.254.0.5 . tcp . 80 : goto lb_tcp_2 }",
    ]
    assert chains == {"lb_tcp_3", "lb_tcp_2"}
    # Same count, one backend swapped: one slot rewritten, dispatch untouched.
    swapped = svc("10.254.0.5", 80, ["10.0.9.10:8080", "10.0.9.99:8080"])
    lines = render_change(new, swapped, chains=chains, vip_refs=refs)  # type: ignore[dict-item]
    assert lines == [
        "delete element ip shoal be_tcp { 10.254.0.5 . 80 . 1 }",
        "add element ip shoal be_tcp { 10.254.0.5 . 80 . 1 : 10.0.9.99 . 8080 }",
    ]


def test_create_and_remove_keep_vip_refcounts() -> None:
    a = svc("10.254.0.5", 80, ["10.0.9.10:80"])
    b = svc("10.254.0.5", 443, [])
    chains: set[str] = set()
    refs: dict = {}  # type: ignore[type-arg]
    first = render_change(None, a, chains=chains, vip_refs=refs)
    assert "add element ip shoal vips { 10.254.0.5 }" in first
    second = render_change(None, b, chains=chains, vip_refs=refs)
    assert second == []  # no backends, VIP already present: nothing to program
    gone = render_change(a, None, chains=chains, vip_refs=refs)
    assert not any("vips" in ln for ln in gone)  # b still uses the VIP
    assert "delete element ip shoal svc { 10.254.0.5 . tcp . 80 }" in gone
    last = render_change(b, None, chains=chains, vip_refs=refs)
    assert last == ["delete element ip shoal vips { 10.254.0.5 }"]


def test_chain_names() -> None:
    assert lb_chain(svc("10.254.0.5", 80, ["10.0.0.1:1"] * 1)) == "lb_tcp_1"
    assert lb_chain(svc(None, 80, ["10.0.0.1:1", "10.0.0.2:1"], "udp")) == "np_udp_2"
    assert render_chain("np_udp_2").endswith("dnat ip to udp dport . numgen random mod 2 "
                                             "map @np_udp")


def test_whole_vip_services_keep_the_port() -> None:
    # Port 0: every port of the protocol, as a Swarm VIP balances; only the address is
    # rewritten (the service's tasks may listen on any port).
    web = svc("10.254.0.5", 0, ["10.0.9.11:0", "10.0.9.10:0"])
    script = render_full([web, svc("10.254.0.5", 0, ["10.0.9.10:0"], "udp")])
    lines = script.splitlines()
    assert lb_chain(web) == "va_tcp_2"
    assert "chain va_tcp_2 { meta mark set meta mark | 0x10000000 dnat ip to ip daddr . " \
           "numgen random mod 2 map @va_tcp; }" in script
    assert "add element ip shoal svca { 10.254.0.5 . tcp : goto va_tcp_2, " \
           "10.254.0.5 . udp : goto va_udp_1 }" in lines
    assert "add element ip shoal va_tcp { 10.254.0.5 . 0 : 10.0.9.10, " \
           "10.254.0.5 . 1 : 10.0.9.11 }" in lines
    # The exact-port dispatch is consulted first, the whole-VIP one after it.
    assert "vmap @svc; ip daddr . meta l4proto vmap @svca;" in script
    # One backend leaves: its slot and the dispatch move, nothing else.
    smaller = svc("10.254.0.5", 0, ["10.0.9.10:0"])
    chains = {"va_tcp_2"}
    refs = {web.vip: 1}
    assert render_change(web, smaller, chains=chains, vip_refs=refs) == [  # type: ignore[arg-type]
        "add chain ip shoal va_tcp_1",
        "add rule ip shoal va_tcp_1 " + render_chain("va_tcp_1"),
        "delete element ip shoal svca { 10.254.0.5 . tcp }",
        "delete element ip shoal va_tcp { 10.254.0.5 . 1 }",
        "add element ip shoal svca { 10.254.0.5 . tcp : goto va_tcp_1 }",
    ]


def test_prepare_declares_every_chain_before_any_rule_and_keeps_elements() -> None:
    from shoal.net.lb_nftables import render_prepare
    lines = render_prepare({"lb_tcp_2", "va_udp_1"}).splitlines()
    assert lines[0] == "add table ip shoal"
    first_rule = min(i for i, ln in enumerate(lines) if ln.startswith("add rule"))
    chains = [ln.split()[4] for ln in lines[:first_rule] if ln.startswith("add chain")]
    assert {"services", "reject_vip", "lb_tcp_2", "va_udp_1"} <= set(chains)
    # Chains are flushed and refilled; sets only declared: their elements stay.
    assert "flush chain ip shoal services" in lines
    assert not any(ln.startswith(("flush map", "flush set", "delete")) for ln in lines)
    assert "add rule ip shoal lb_tcp_2 " + render_chain("lb_tcp_2") in lines


def test_repair_script_touches_only_the_named_chains_in_a_safe_order() -> None:
    script = render_repair(missing=["lb_tcp_3"], recreate=["martians"], refill=["services"],
                           sets=["vips"])
    lines = script.splitlines()
    assert lines[:2] == ["add table ip shoal", "add set ip shoal vips { type ipv4_addr; }"]
    # Flushed before the delete (a stray rule may refer to the recreated chain), declared
    # again with its hook, then every named chain refilled; nothing else is named.
    assert lines[2:6] == [
        "flush chain ip shoal services", "flush chain ip shoal martians",
        "delete chain ip shoal martians", "add chain ip shoal lb_tcp_3"]
    assert lines[6] == ("add chain ip shoal martians { type filter hook prerouting "
                        "priority -300; policy accept; }")
    assert lines[7] == "add rule ip shoal lb_tcp_3 " + render_chain("lb_tcp_3")
    assert {line.split()[4] for line in lines[2:]} == {"services", "martians", "lb_tcp_3"}
    assert "prerouting" not in {line.split()[4] for line in lines[2:]}


def test_removal_drops_rules_then_sets_then_chains() -> None:
    assert render_removal(["mine"], ["stray"]).splitlines() == [
        "flush chain ip shoal mine", "delete set ip shoal stray",
        "delete chain ip shoal mine"]
