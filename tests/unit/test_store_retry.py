"""``shoal.store.retry``: when an ambiguous write counts as landed, and the attempt clock."""

from __future__ import annotations

import pytest

from shoal.store import errors, etcd, retry


def test_landed_needs_every_put_with_its_value_and_lease_and_every_delete_gone() -> None:
    ops = [etcd.op_put(b"a", b"1"), etcd.op_put(b"b", b"2", lease=7), etcd.op_delete(b"c")]
    assert retry.landed(ops, {b"a": (b"1", 0), b"b": (b"2", 7), b"c": None})
    assert not retry.landed(ops, {b"a": (b"1", 0), b"b": (b"2", 8), b"c": None})  # lease
    assert not retry.landed(ops, {b"a": (b"0", 0), b"b": (b"2", 7), b"c": None})  # value
    assert not retry.landed(ops, {b"a": (b"1", 0), b"b": (b"2", 7), b"c": (b"x", 0)})
    assert not retry.landed(ops, {b"b": (b"2", 7)})  # a put key that is not there


def test_touched_keys_skip_reads() -> None:
    ops = [etcd.op_get(b"r"), etcd.op_put(b"a", b"1"), etcd.op_delete(b"c")]
    assert retry.touched_keys(ops) == [b"a", b"c"]


async def test_attempts_double_then_give_up_with_the_store_error() -> None:
    policy = retry.Policy(budget=0.3, first_attempt=0.1, max_attempt=0.4, backoff=0.01)
    attempts = retry.Attempts(policy, "txn")
    assert attempts.timeout() == 0.1
    await attempts.failed(TimeoutError())
    assert 0.2 <= attempts.timeout() <= 0.3  # doubled, capped by what is left
    with pytest.raises(errors.UnavailableError, match=r"no answer to txn within 0\.3 s"):
        for _ in range(100):
            await attempts.failed(TimeoutError())


async def test_a_refused_certificate_is_not_retried() -> None:
    attempts = retry.Attempts(retry.Policy(budget=5.0), "range")
    with pytest.raises(errors.TLSRefusedError):
        await attempts.failed(errors.TLSRefusedError("https://a:2379", "bad certificate"))
    assert attempts.failures == 0


async def test_only_an_attempt_that_ran_out_of_time_doubles_the_next_deadline() -> None:
    policy = retry.Policy(budget=5.0, first_attempt=1.0, max_attempt=8.0, backoff=0.001)
    attempts = retry.Attempts(policy, "txn")
    # The member's connection broke at once: the next attempt (likely forwarded to a
    # leader that just died) must not wait twice as long for it.
    await attempts.failed(errors.UnavailableError("https://a:2379", "unavailable: Socket closed"))
    assert attempts.timeout() == 1.0
    await attempts.failed(errors.UnavailableError("https://a:2379", "deadline_exceeded"))
    assert attempts.timeout() == 2.0
    await attempts.failed(TimeoutError())
    assert attempts.timeout() == 4.0


async def test_a_write_refused_for_want_of_space_is_not_retried() -> None:
    attempts = retry.Attempts(retry.Policy(budget=5.0), "txn")
    refusal = errors.NoSpaceError("http://a:2379", "etcd said: database space exceeded")
    with pytest.raises(errors.NoSpaceError):
        await attempts.failed(refusal)
    assert attempts.failures == 0
    # Callers that retry writes later when etcd is unavailable treat it the same way.
    assert isinstance(refusal, errors.UnavailableError)
