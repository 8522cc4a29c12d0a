"""shoal/join/tokens.py: which token admits what, and why the others are refused."""

from __future__ import annotations

import pytest

from shoal.crds import sealed
from shoal.join import tokens
from shoal.join.protocol import Refusal
from shoal.pki import ca as pki_ca

RING = sealed.Keyring.generate()
CA = pki_ca.make_ca().cert_pem
OTHER_CA = pki_ca.make_ca().cert_pem


def test_tokens_admit_their_role_and_refuse_the_rest_saying_why() -> None:
    toks = tokens.generate(RING)
    worker = tokens.token_text(toks, RING, CA, "worker")
    manager = tokens.token_text(toks, RING, CA, "manager")
    assert worker.startswith("SWMTKN-1-") and len(worker.split("-")[2]) == 50
    assert tokens.check(toks, worker, CA) == "worker"
    assert tokens.check(toks, manager, CA) == "manager"
    with pytest.raises(Refusal, match="made for another cluster"):
        tokens.check(toks, tokens.token_text(toks, RING, OTHER_CA, "worker"), CA)
    fresh = tokens.rotated(toks, RING, "worker")
    with pytest.raises(Refusal, match="this worker token was rotated"):
        tokens.check(fresh, worker, CA)
    assert tokens.check(fresh, manager, CA) == "manager"  # the other role is untouched
    wrong = worker[:-25] + "0" * 25
    with pytest.raises(Refusal, match="matches neither"):
        tokens.check(fresh, wrong, CA)
    with pytest.raises(Refusal, match='invalid join token "hello"'):
        tokens.check(fresh, "hello", CA)
    again = tokens.Tokens.from_json(fresh.to_json(), 7)
    assert tokens.check(again, tokens.token_text(again, RING, CA, "worker"), CA) == "worker"
