"""Work queue: de-duplication, no concurrent processing of a key, backoff, rate limit,
delayed requeue and shutdown. Time is a FakeClock, so nothing here sleeps."""

from __future__ import annotations

import asyncio

import pytest

from shoal.runtime import clock, ratelimit, workqueue


def make_queue(fake: clock.FakeClock, limiter: ratelimit.RateLimiter | None = None,
               ) -> workqueue.WorkQueue:
    return workqueue.WorkQueue("test", limiter or ratelimit.default_rate_limiter(fake), fake)


async def test_duplicate_adds_are_processed_once() -> None:
    q = make_queue(clock.FakeClock())
    for key in ("a", "b", "a", "a", "b"):
        q.add(key)
    assert len(q) == 2
    assert await q.get() == "a"
    assert await q.get() == "b"
    assert len(q) == 0


async def test_key_added_while_processing_comes_back_after_done_not_before() -> None:
    q = make_queue(clock.FakeClock())
    q.add("a")
    key = await q.get()
    assert key == "a"
    q.add("a")  # changed while a worker has it
    q.add("a")
    assert len(q) == 0, "must not be handed to a second worker while in progress"
    second = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not second.done()
    q.done("a")
    assert await asyncio.wait_for(second, 1) == "a"
    q.done("a")
    assert len(q) == 0 and not q.processing


async def test_workers_never_process_one_key_concurrently() -> None:
    q = make_queue(clock.FakeClock())
    active: set[str] = set()
    overlaps: list[str] = []
    processed: list[str] = []

    async def worker() -> None:
        while (key := await q.get()) is not None:
            if key in active:
                overlaps.append(key)
            active.add(key)
            q.add(key)  # changed again while in progress
            await asyncio.sleep(0)  # let the other workers run meanwhile
            processed.append(key)
            active.discard(key)
            q.done(key)
            if len(processed) >= 200:
                q.shutdown()

    for key in ("x", "y", "z"):
        q.add(key)
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(4))), 5)
    assert not overlaps
    assert set(processed) == {"x", "y", "z"}


def test_exponential_backoff_grows_caps_and_resets_on_forget() -> None:
    backoff = ratelimit.ExponentialBackoff(base=0.01, cap=0.1)
    assert [backoff.when("k") for _ in range(6)] == pytest.approx(
        [0.01, 0.02, 0.04, 0.08, 0.1, 0.1])
    assert backoff.num_requeues("k") == 6
    assert backoff.when("other") == pytest.approx(0.01), "backoff is per key"
    backoff.forget("k")
    assert backoff.num_requeues("k") == 0
    assert backoff.when("k") == pytest.approx(0.01)


async def test_add_rate_limited_waits_for_the_keys_backoff() -> None:
    fake = clock.FakeClock()
    q = make_queue(fake, ratelimit.ExponentialBackoff(base=1.0, cap=100.0))
    delays = []
    for _ in range(4):
        q.add_rate_limited("k")
        start = fake.now()
        while len(q) == 0:
            fake.advance(0.25)
        delays.append(fake.now() - start)
        assert await q.get() == "k"
        q.done("k")
    assert delays == [1.0, 2.0, 4.0, 8.0]
    q.forget("k")
    q.add_rate_limited("k")
    fake.advance(1.0)
    assert len(q) == 1, "forget resets the backoff to its base"


def test_token_bucket_allows_a_burst_then_spaces_requests() -> None:
    fake = clock.FakeClock()
    bucket = ratelimit.TokenBucket(qps=10, burst=3, clock=fake)
    assert [bucket.when(str(i)) for i in range(3)] == [0, 0, 0]
    assert [bucket.when(str(i)) for i in range(3, 6)] == pytest.approx([0.1, 0.2, 0.3])
    fake.advance(1.0)  # pays back the 3 reserved tokens, then refills up to the burst
    assert [bucket.when(k) for k in "xyz"] == [0, 0, 0]
    assert bucket.when("w") == pytest.approx(0.1)


async def test_global_rate_limit_applies_across_keys() -> None:
    fake = clock.FakeClock()
    q = make_queue(fake, ratelimit.default_rate_limiter(fake, base=0.001, qps=10, burst=5))
    for i in range(10):
        q.add_rate_limited(f"k{i}")  # ten different keys, each on its first failure
    fake.advance(0.001)
    assert len(q) == 5, "the burst goes through after the per-key backoff"
    fake.advance(0.1)
    assert len(q) == 6, "then one key per 1/qps seconds"
    fake.advance(0.4)
    assert len(q) == 10


async def test_add_after_delays_and_the_earliest_request_wins() -> None:
    fake = clock.FakeClock()
    q = make_queue(fake)
    q.add_after("a", 5.0)
    q.add_after("a", 10.0)   # later: ignored
    q.add_after("b", 3.0)
    q.add_after("b", 1.0)    # earlier: replaces
    q.add_after("c", 0)      # immediate
    assert len(q) == 1 and q.waiting == 2
    assert await q.get() == "c"
    fake.advance(1.0)
    assert await q.get() == "b"
    fake.advance(3.9)
    assert len(q) == 0
    fake.advance(0.1)
    assert await q.get() == "a"
    fake.advance(100)
    assert len(q) == 0, "the superseded request must not fire later"
    assert fake.pending == 0


async def test_add_after_of_a_queued_key_does_not_duplicate_it() -> None:
    fake = clock.FakeClock()
    q = make_queue(fake)
    q.add("a")
    q.add_after("a", 1.0)
    fake.advance(1.0)
    assert len(q) == 1
    assert await q.get() == "a"


async def test_shutdown_releases_waiting_getters_and_drops_timers() -> None:
    fake = clock.FakeClock()
    q = make_queue(fake)
    getters = [asyncio.create_task(q.get()) for _ in range(3)]
    q.add_after("later", 5.0)
    await asyncio.sleep(0)
    q.shutdown()
    assert await asyncio.wait_for(asyncio.gather(*getters), 1) == [None, None, None]
    q.add("x")
    fake.advance(10)
    assert len(q) == 0
    assert await q.get() is None
    assert fake.pending == 0
