"""Join tokens: Swarm's SWMTKN-1 shape, the CA pinned by its digest, secrets compared safely."""

from __future__ import annotations

import hashlib

import pytest

from shoal.pki import ca, tokens


def test_a_token_pins_the_ca_and_carries_a_secret() -> None:
    cluster = ca.make_ca()
    secret = tokens.new_secret()
    text = tokens.make_token(cluster.der, secret)
    prefix, version, digest, sec = text.split("-")
    assert (prefix, version, len(digest), len(sec)) == ("SWMTKN", "1", 50, 25)
    assert int(digest, 36) == int.from_bytes(hashlib.sha256(cluster.der).digest(), "big")
    token = tokens.parse_token(f"  {text}\n")
    token.check_ca(cluster.der)
    assert token.matches(secret) and not token.matches(tokens.new_secret())
    assert tokens.matches_hash(token, tokens.secret_hash(secret))
    with pytest.raises(tokens.TokenError, match="join token is for another cluster"):
        token.check_ca(ca.make_ca().der, "10.0.0.1:4243")


def test_worker_and_manager_secrets_differ() -> None:
    assert len({tokens.new_secret() for _ in range(50)}) == 50


@pytest.mark.parametrize("bad", ["", "SWMTKN-1-abc-def", "SWMTKN-2-" + "a" * 50 + "-" + "b" * 25,
                                 "SWMTKN-1-" + "A" * 50 + "-" + "b" * 25])
def test_malformed_tokens_are_refused_saying_the_shape(bad: str) -> None:
    with pytest.raises(tokens.TokenError, match=r"expected SWMTKN-1-<50 characters>-<25 char"):
        tokens.parse_token(bad)
