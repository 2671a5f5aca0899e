"""Client-side rate limits measured on a virtual clock: how many requests start in each
virtual second, not how long the wall clock took (which a broken limiter on a loaded machine
can pass)."""

from __future__ import annotations

import asyncio

from loom.synth.limits import Limiter, RateLimits

from tests.synth.virtual_clock import run_virtual


async def _starts(limits: RateLimits, n: int, tokens: int = 0, hold_s: float = 0.0):
    limiter = Limiter(limits)
    loop = asyncio.get_running_loop()
    times: list[float] = []
    in_flight = [0, 0]  # now, most

    async def one() -> None:
        async with limiter.slot(tokens):
            times.append(loop.time())
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
            await asyncio.sleep(hold_s)
            in_flight[0] -= 1

    await asyncio.gather(*(one() for _ in range(n)))
    return sorted(times), in_flight[1]


def _per_window(times: list[float], width: float = 1.0) -> int:
    return max(sum(1 for u in times if t <= u < t + width - 1e-9) for t in times)


def test_request_bucket_four_a_second():
    limits = RateLimits(concurrency=32, requests_per_minute=240, period_s=1.0)
    times, _ = run_virtual(_starts(limits, 12))
    assert sum(t == 0.0 for t in times) == 4  # a full bucket: a burst of 4
    gaps = [round(b - a, 6) for a, b in zip(times[4:], times[5:], strict=False)]
    assert all(g >= 0.25 - 1e-6 for g in gaps), gaps  # then one every 0.25 s
    assert times[-1] >= 2.0 - 1e-6  # 8 more at 4 a second
    assert _per_window(times) <= 4 + 4


def test_rates_per_minute_scale_with_the_period():
    limits = RateLimits(concurrency=32, requests_per_minute=60)  # 1 a second, 60 s period
    times, _ = run_virtual(_starts(limits, 62))
    assert sum(t == 0.0 for t in times) == 60
    assert [round(t) for t in times[60:]] == [1, 2]


def test_token_bucket():
    # 1,000 tokens a second; calls of 400: 2 at once (800), the third once 200 have leaked
    # (0.2 s), then one every 0.4 s.
    limits = RateLimits(concurrency=32, tokens_per_minute=60_000, period_s=1.0)
    times, _ = run_virtual(_starts(limits, 6, tokens=400))
    assert sum(t == 0.0 for t in times) == 2
    assert [round(t, 3) for t in times[2:]] == [0.2, 0.6, 1.0, 1.4]
    # a call larger than the bucket waits for a full bucket instead of forever
    times, _ = run_virtual(_starts(limits, 2, tokens=5000))
    assert times[0] == 0.0 and 0.99 <= times[1] <= 1.01
    # no token limit, or a call that asks for none: no wait
    times, _ = run_virtual(_starts(limits, 5, tokens=0))
    assert times == [0.0] * 5


def test_concurrency_cap():
    times, most = run_virtual(_starts(RateLimits(concurrency=3), 10, hold_s=1.0))
    assert most == 3
    assert [sum(t == s for t in times) for s in (0.0, 1.0, 2.0, 3.0)] == [3, 3, 3, 1]


def test_share_splits_the_rates():
    limits = RateLimits(requests_per_minute=240, tokens_per_minute=9000, concurrency=7)
    half = limits.share(2)
    assert half.requests_per_minute == 120 and half.tokens_per_minute == 4500
    assert half.concurrency == 7
    assert limits.share(0) == limits
    assert RateLimits().share(4).requests_per_minute is None
