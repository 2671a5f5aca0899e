"""Client-side rate limits: a concurrency cap and token buckets on requests and tokens.

One `Limiter` per stage instance (one event loop). `slot(tokens)` waits for a request
token, `tokens` LLM tokens and a free concurrency slot, in that order. The buckets are
aiolimiter's leaky buckets (capacity = the per-period rate, refilled continuously).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pydantic
from aiolimiter import AsyncLimiter


class RateLimits(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    concurrency: int = pydantic.Field(32, ge=1)  # requests in flight per worker
    requests_per_minute: float | None = pydantic.Field(None, gt=0)
    tokens_per_minute: float | None = pydantic.Field(None, gt=0)
    period_s: float = pydantic.Field(60.0, gt=0)  # the bucket's period (tests shorten it)

    def share(self, workers: int) -> RateLimits:
        """Each of `workers` stage instances gets an equal slice of the rates."""
        w = max(1, workers)
        return self.model_copy(update={
            "requests_per_minute": self.requests_per_minute / w if self.requests_per_minute else None,
            "tokens_per_minute": self.tokens_per_minute / w if self.tokens_per_minute else None,
        })


class Limiter:
    """Build it inside the event loop that will use it."""

    def __init__(self, limits: RateLimits):
        scale = limits.period_s / 60.0
        self.limits = limits
        self._sem = asyncio.Semaphore(limits.concurrency)
        self._requests = (AsyncLimiter(max(1.0, limits.requests_per_minute * scale), limits.period_s)
                          if limits.requests_per_minute else None)
        self._tokens = (AsyncLimiter(max(1.0, limits.tokens_per_minute * scale), limits.period_s)
                        if limits.tokens_per_minute else None)

    @contextlib.asynccontextmanager
    async def slot(self, tokens: int = 0) -> AsyncIterator[None]:
        if self._requests is not None:
            await self._requests.acquire(1)
        if self._tokens is not None and tokens > 0:
            # a call larger than the whole bucket waits for a full bucket, not forever
            await self._tokens.acquire(min(float(tokens), self._tokens.max_rate))
        async with self._sem:
            yield
