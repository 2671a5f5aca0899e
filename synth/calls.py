"""The one LLM call loop: synth and relabel both send their calls through `CallLoop`.

Cache first (on the caller's thread, a remote cache's entries a few at a time: a hit
costs no loop hop and no model request); a miss builds its parts, then runs on the loop's
own event loop (`client.aio`), many calls in flight under a concurrency cap and
request/token buckets (synth.limits), transient faults retried (synth.client). Refusals
and answers still schema-invalid after the one repair are cached as such, so a rerun does
not pay for them again; calls that failed after every retry are not cached, so a rerun
tries them again. Every call is counted under `LLM_STAT_NAMES` (calls, cache hits, billed
requests, retries, repairs, refusals, tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import pydantic
from google.genai import types
from loom.schemas.records import LLM_STAT_NAMES, Reason
from loom.synth import client as llm_client
from loom.synth.cache import ResponseCache
from loom.synth.limits import Limiter, RateLimits


class Unsendable(Exception):
    """The input cannot be put into a request (unreadable source, nothing to send)."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Call:
    """One structured call. `parts` is built only on a cache miss and may raise Unsendable;
    `check(raw, parsed)` may raise LLMBadResponse (the answer then gets the one repair)."""

    key: str  # the response cache key (synth.cache.key)
    prompt: str
    parts: Callable[[], list[types.Part]]
    schema: type[pydantic.BaseModel] = llm_client.QueryOutput
    check: Callable[[dict, Any], dict[str, Any]] = llm_client.queries_check
    tokens: int = 0  # worst-case tokens, for the token bucket


def rejection(answer: dict) -> tuple[Reason, str] | None:
    """A refusal / unusable answer / unsendable input (a Rejected row), or None."""
    if "rejected" in answer:
        return Reason(answer["rejected"]), str(answer.get("message", ""))
    return None


def new_stats() -> dict[str, int]:
    return dict.fromkeys(LLM_STAT_NAMES, 0)


class CallLoop:
    """Owns the client, the cache, the limiter and one event loop on a daemon thread.

    Picklable before and after `setup` (a stage ships it to its workers). With the
    offline backend and no base URL, `setup` starts an offline server in-process."""

    def __init__(self, llm: llm_client.LLMConfig, cache_uri: str,
                 limits: RateLimits | None = None, base_url: str | None = None,
                 staging_uri: str | None = None):
        self.llm, self.cache_uri = llm, cache_uri
        self.limits, self.base_url = limits or RateLimits(), base_url
        self.staging_uri = staging_uri  # vertex: where media over the inline limit is copied
        self.refs = None  # synth.refs.References, built in setup
        self._client = None
        self._server = None
        self._cache: ResponseCache | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limiter: Limiter | None = None
        self.totals = new_stats()  # over every batch this instance ran
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"llm": self.llm, "cache_uri": self.cache_uri, "limits": self.limits,
                "base_url": self.base_url, "staging_uri": self.staging_uri}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def setup(self) -> None:
        if self._client is not None:
            return
        base_url = self.base_url or self.llm.base_url
        if self.llm.backend == "offline" and not base_url:
            from loom.synth.offline_server import start_server

            self._server, base_url = start_server(0)
        self._client = llm_client.make_client(self.llm, base_url=base_url)
        self._cache = ResponseCache(self.cache_uri)
        from loom.synth.refs import References  # refs raises this module's Unsendable

        self.refs = References(self._client, self.llm.backend, self.llm.inline_limit_bytes,
                               self.cache_uri.rstrip("/") + "/_files", self.staging_uri)
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="loom-llm-loop", daemon=True).start()
        self._limiter = self._submit(self._make_limiter()).result()

    async def _make_limiter(self) -> Limiter:  # built inside the loop that uses it
        return Limiter(self.limits)

    def _submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def teardown(self) -> None:
        if self._loop is not None:
            loop, self._loop = self._loop, None
            with contextlib.suppress(Exception):  # closing sessions is best effort
                asyncio.run_coroutine_threadsafe(self._client.aio.aclose(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._client = None

    def run(self, calls: list[Call]) -> tuple[list[dict], dict[str, int]]:
        """Answers in the order of `calls` (an answer, or {"rejected": reason, "message"}),
        and this batch's counts."""
        self.setup()
        stats = new_stats()
        answers: list[dict | None] = [None] * len(calls)
        todo = []
        for i, (call, cached) in enumerate(zip(calls, self._cache.get_many(
                [c.key for c in calls]), strict=True)):
            if cached is not None:
                answers[i] = cached
                stats["cache_hits"] += 1
                continue
            try:  # inline under the request limit, the largest parts by reference
                parts = self.refs.place(call.parts(), call.prompt)
            except Unsendable as exc:
                answers[i] = {"rejected": exc.reason.value, "message": str(exc)}
                continue
            todo.append((i, call, parts))
        if todo:
            results = self._submit(self._all(todo, stats)).result()
            for (i, _, _), answer in zip(todo, results, strict=True):
                answers[i] = answer
        with self._lock:  # a Beam worker may run bundles on several threads
            for k, v in stats.items():
                self.totals[k] += v
        return answers, stats

    def requests(self, calls: list[Call]) -> dict[str, dict]:
        """Batch API lines: cache key -> GenerateContentRequest JSON, for each call not
        cached whose input can be sent (an Unsendable one is left to the online pass,
        which makes its Rejected row)."""
        self.setup()
        out = {}
        cached = dict(zip((keys := list(dict.fromkeys(c.key for c in calls))),
                          self._cache.get_many(keys), strict=True))
        for call in calls:
            if call.key in out or cached[call.key] is not None:
                continue
            try:
                parts = self.refs.place(call.parts(), call.prompt)
            except Unsendable:
                continue
            out[call.key] = llm_client.request_json(self.llm, call.prompt, parts, call.schema)
        return out

    def collect(self, calls: list[Call], lines: dict[str, dict],
                requests: dict[str, dict]) -> dict[str, int]:
        """Batch API answers (key -> {"response": ...} or {"error": ...}) through the online
        path: refusal, schema check, the one (online) repair, the cache, the counts. A
        failed line is not cached: a later round or the online pass tries it again."""
        self.setup()
        stats = new_stats()
        todo, seen = [], set()
        for call in calls:
            line = lines.get(call.key)
            if (call.key in seen or not line or "response" not in line
                    or call.key not in requests or self._cache.get(call.key) is not None):
                continue  # a resumed collect skips what it already cached
            seen.add(call.key)
            resp = types.GenerateContentResponse.model_validate(line["response"])
            todo.append((call, llm_client.request_parts(requests[call.key]), resp))
        if todo:
            self._submit(self._answered(todo, stats)).result()
        with self._lock:
            for k, v in stats.items():
                self.totals[k] += v
        return stats

    async def _answered(self, todo: list, stats: dict[str, int]) -> list[dict]:
        return await asyncio.gather(*(self._one(call, parts, stats, first)
                                      for call, parts, first in todo))

    async def _all(self, todo: list, stats: dict[str, int]) -> list[dict]:
        return await asyncio.gather(*(self._one(call, parts, stats) for _, call, parts in todo))

    async def _one(self, call: Call, parts: list[types.Part], stats: dict[str, int],
                   first: types.GenerateContentResponse | None = None) -> dict:
        def slot():
            return self._limiter.slot(call.tokens)

        def on_retry(_exc: Exception) -> None:
            stats["retries"] += 1

        stats["llm_calls"] += 1
        try:
            answer = await llm_client.agenerate_structured(
                self._client, self.llm, call.prompt, parts, call.schema, call.check, slot,
                on_retry, first=first)
        except (llm_client.LLMBlocked, llm_client.LLMBadResponse) as exc:
            blocked = isinstance(exc, llm_client.LLMBlocked)
            stats["blocked"] += int(blocked)
            usage = getattr(exc, "usage", None) or {}
            _count_usage(stats, usage)
            reason = Reason.LLM_BLOCKED if blocked else Reason.LLM_BAD_RESPONSE
            value = {"rejected": reason.value, "message": str(exc), "usage": usage}
            await asyncio.to_thread(self._cache.put, call.key, value)
            return value
        except Exception as exc:  # noqa: BLE001 - LLMError after retries and anything else: a row
            msg = (str(exc) if isinstance(exc, llm_client.LLMError)
                   else f"{type(exc).__name__}: {exc}")
            return {"rejected": Reason.LLM_ERROR.value, "message": msg, "transient": True}
        _count_usage(stats, answer.get("usage") or {})
        stats["repairs"] += int(bool(answer.get("repaired")))
        await asyncio.to_thread(self._cache.put, call.key, answer)  # fsyncs: off the loop
        return answer


def _count_usage(stats: dict[str, int], usage: dict) -> None:
    stats["requests"] += int(usage.get("calls", 1))
    stats["input_tokens"] += int(usage.get("input_tokens", 0))
    stats["output_tokens"] += int(usage.get("output_tokens", 0))
