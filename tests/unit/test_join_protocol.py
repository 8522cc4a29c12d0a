"""shoal/join/protocol.py: the join address and the messages' validation."""

from __future__ import annotations

import pytest

from shoal.join import protocol
from shoal.join.protocol import Refusal


def test_split_addr() -> None:
    assert protocol.split_addr("10.0.0.1") == ("10.0.0.1", 4243)
    assert protocol.split_addr("10.0.0.1:5000") == ("10.0.0.1", 5000)
    assert protocol.split_addr("https://m1:4243/") == ("m1", 4243)
    assert protocol.split_addr("[fd00::1]:9") == ("fd00::1", 9)
    with pytest.raises(ValueError, match="speaks only HTTPS"):
        protocol.split_addr("http://10.0.0.1:4243")
    with pytest.raises(ValueError, match='port "x" is not a number'):
        protocol.split_addr("m1:x")


def test_messages_refuse_what_is_missing() -> None:
    with pytest.raises(Refusal, match='"csr" is missing'):
        protocol.JoinRequest.from_json({"token": "t", "name": "n", "advertise_addr": "a"})
    with pytest.raises(Refusal, match="not a valid name"):
        protocol.JoinRequest.from_json({"token": "t", "csr": "c", "name": "Bad_Name",
                                        "advertise_addr": "a"})
    resp = protocol.JoinResponse("worker", "C", "CA", ("https://a:2379",), "/shoal", ("a:4243",))
    assert protocol.JoinResponse.from_json(resp.to_json()) == resp
    with pytest.raises(Refusal, match='"keyring" is missing'):
        protocol.JoinResponse.from_json({**resp.to_json(), "role": "manager"})
