"""The LLM client: one google-genai Client for the offline server, Gemini or Vertex.

The backend is always chosen by configuration; an API key in the environment never
switches it. Keys are read from the environment at client build time, passed only to
the SDK, and never stored in a config, a record, a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import random
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import google.oauth2.credentials
import pydantic
import tenacity
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

OFFLINE_API_KEY = "offline-no-key"
_BLOCK_FINISH = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                 "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "LANGUAGE"}


class LLMConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    backend: Literal["offline", "gemini", "vertex"] = "offline"
    model: str = "gemini-2.5-flash"
    base_url: str | None = None
    temperature: float = 0.0
    seed: int = 0
    max_output_tokens: int = 256
    project: str | None = None
    location: str | None = "us-central1"
    timeout_s: float = 60.0
    # loom's own retry (google-genai's is off: it ignores a 429's retryDelay)
    retry_attempts: int = 6
    retry_initial_delay_s: float = 1.0
    retry_max_delay_s: float = 60.0
    retry_jitter_s: float = 1.0
    # a request's inline data (base64, as sent) above this goes by reference (synth.refs)
    inline_limit_bytes: int = pydantic.Field(20 * 1024 * 1024, ge=1024)

    def generation_config(self) -> dict[str, Any]:
        """What is sent besides the prompt (recorded on every Pair, part of the cache key)."""
        return {"temperature": self.temperature, "seed": self.seed,
                "max_output_tokens": self.max_output_tokens,
                "response_mime_type": "application/json"}


class QueryOutput(pydantic.BaseModel):
    task: str
    queries: list[str]


log = logging.getLogger(__name__)
RETRY_CODES = frozenset({408, 429, 500, 502, 503, 504})
REPAIR_PROMPT = ("Your previous answer did not match the JSON schema ({error}). Answer again "
                 "with only a JSON object of the form "
                 '{{"task": "<task description>", "queries": ["<query>", ...]}}.')


class LLMError(RuntimeError):
    """The call failed (HTTP error after retries, connection error, timeout)."""


class LLMBlocked(LLMError):
    """The model refused: a prompt block reason, a safety-type finish reason, no candidates."""


class LLMBadResponse(LLMError):
    """The model answered, but not with the structured output asked for (after one repair)."""


class TransientError(LLMError):
    """Worth another try: 408/429/5xx, a timeout, a dropped connection, a garbled body."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _http_options(cfg: LLMConfig, base_url: str | None, **kw: Any) -> types.HttpOptions:
    # retry_options=None: the SDK tries once; `call_with_retry` owns retrying.
    return types.HttpOptions(base_url=base_url, timeout=int(cfg.timeout_s * 1000), **kw)


def check_backend(cfg: LLMConfig) -> None:
    """Fail fast in the driver (ValueError, one line) before any worker starts."""
    if cfg.backend == "gemini" and not (os.environ.get("GEMINI_API_KEY")
                                        or os.environ.get("GOOGLE_API_KEY")):
        raise ValueError("backend 'gemini' needs GEMINI_API_KEY or GOOGLE_API_KEY to be set")
    if cfg.backend == "vertex" and not cfg.project:
        raise ValueError("backend 'vertex' needs llm.project")


def make_client(cfg: LLMConfig, base_url: str | None = None) -> genai.Client:
    base_url = base_url or cfg.base_url
    if cfg.backend == "offline":
        if not base_url:
            raise ValueError("the offline backend needs base_url (start synth.offline_server)")
        return genai.Client(api_key=OFFLINE_API_KEY,
                            http_options=_http_options(cfg, base_url, api_version="v1beta"))
    if cfg.backend == "gemini":
        key = os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
        if not key:
            raise ValueError("backend 'gemini' needs GEMINI_API_KEY or GOOGLE_API_KEY to be set")
        return genai.Client(api_key=key, http_options=_http_options(cfg, base_url))
    if cfg.backend == "vertex":
        if not cfg.project:
            raise ValueError("backend 'vertex' needs llm.project")
        # Google credentials (ADC) for Vertex AI itself; the offline server on this machine
        # speaks the Vertex protocol too and takes a fixed bearer token, so tests and
        # offline runs need no credentials (nor a metadata-server lookup).
        creds = (google.oauth2.credentials.Credentials(token=OFFLINE_API_KEY)
                 if is_loopback(base_url) else None)
        return genai.Client(vertexai=True, project=cfg.project, location=cfg.location,
                            credentials=creds, http_options=_http_options(cfg, base_url))
    raise ValueError(f"unknown backend {cfg.backend!r}")


def is_loopback(url: str | None) -> bool:
    """A base URL on this machine (the offline server binds 127.0.0.1 only)."""
    host = urllib.parse.urlsplit(url or "").hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


_DELAY_RE = re.compile(r"^\s*([0-9.]+)s\s*$")


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked for: a RetryInfo retryDelay in the body, else Retry-After."""
    if not isinstance(exc, genai_errors.APIError):
        return None
    details = exc.details.get("error", exc.details) if isinstance(exc.details, dict) else {}
    for d in (details.get("details") or []) if isinstance(details, dict) else []:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
            m = _DELAY_RE.match(str(d.get("retryDelay", "")))
            if m:
                return float(m.group(1))
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    try:
        value = headers.get("Retry-After") or headers.get("retry-after")
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def classify(exc: BaseException) -> LLMError:
    """A failed attempt as a typed error: TransientError (retried) or LLMError (not)."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, genai_errors.APIError):
        msg = f"HTTP {exc.code} {exc.status}: {exc.message}"
        if exc.code in RETRY_CODES:
            return TransientError(msg, retry_after(exc))
        return LLMError(msg)
    # timeouts, dropped connections, truncated or garbled bodies the SDK could not parse
    return TransientError(f"{type(exc).__name__}: {str(exc)[:200]}")


class _Wait(tenacity.wait.wait_base):
    """Exponential backoff with jitter, or what the server asked for if that is longer."""

    def __init__(self, cfg: LLMConfig):
        self.cfg = cfg

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        cfg = self.cfg
        n = retry_state.attempt_number
        base = min(cfg.retry_max_delay_s, cfg.retry_initial_delay_s * 2 ** (n - 1))
        base += random.uniform(0, cfg.retry_jitter_s)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = getattr(exc, "retry_after_s", None)
        if asked is not None:
            return min(cfg.retry_max_delay_s, max(asked, 0.0) + random.uniform(0, cfg.retry_jitter_s))
        return base


async def call_with_retry(cfg: LLMConfig, attempt: Callable[[], Awaitable[Any]],
                          on_retry: Callable[[LLMError], None] | None = None) -> Any:
    """Run `attempt` until it succeeds, a non-transient error, or `retry_attempts` tries."""

    async def once() -> Any:
        try:
            return await asyncio.wait_for(attempt(), timeout=cfg.timeout_s + 1.0)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - classified, then retried or raised
            raise classify(exc) from None

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if on_retry is not None and isinstance(exc, LLMError):
            on_retry(exc)

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(max(1, cfg.retry_attempts)),
        wait=_Wait(cfg),
        retry=tenacity.retry_if_exception_type(TransientError),
        before_sleep=before_sleep,
        reraise=True,
    )
    return await retrying(once)


def _usage(response: types.GenerateContentResponse) -> dict[str, int]:
    u = response.usage_metadata
    return {"input_tokens": int(getattr(u, "prompt_token_count", 0) or 0),
            "output_tokens": int((getattr(u, "candidates_token_count", 0) or 0)
                                 + (getattr(u, "thoughts_token_count", 0) or 0))}


def _blocked(response: types.GenerateContentResponse) -> str | None:
    """Why the model refused, or None: never retried, a Rejected row carries the reason."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        return f"prompt blocked: {getattr(feedback.block_reason, 'value', feedback.block_reason)}"
    if not response.candidates:
        return "no candidates in the response"
    finish = response.candidates[0].finish_reason
    finish_name = getattr(finish, "value", finish)
    if finish_name in _BLOCK_FINISH:
        return f"response blocked: finish reason {finish_name}"
    return None


@functools.lru_cache(maxsize=None)
def _json_schema(schema: type[pydantic.BaseModel]) -> dict[str, Any]:
    """Built once per model: the SDK would rebuild it from the class on every call."""
    return schema.model_json_schema()


def queries_check(raw: dict, out: QueryOutput) -> dict[str, Any]:
    queries = [q.strip() for q in out.queries if isinstance(q, str) and q.strip()]
    if not queries:
        raise LLMBadResponse("structured output has no queries")
    return dict(raw) | {"task": out.task.strip(), "queries": queries}


def _parse(response: types.GenerateContentResponse, schema: type[pydantic.BaseModel],
           check: Callable[[dict, Any], dict[str, Any]]) -> dict[str, Any]:
    """The structured answer, or LLMBadResponse naming what was wrong."""
    text = response.text
    try:
        raw = json.loads(text or "")
        out = schema.model_validate(raw)
    except pydantic.ValidationError as exc:
        where = ".".join(map(str, exc.errors()[0]["loc"])) or "root"
        raise LLMBadResponse(f"schema-invalid output: {where}: {exc.errors()[0]['msg']}") from None
    except ValueError as exc:
        raise LLMBadResponse(f"unparsable structured output: {type(exc).__name__}") from None
    result = check(raw, out)
    result["model_version"] = response.model_version
    result["response_id"] = response.response_id
    return result


async def agenerate_pair_json(client: genai.Client, cfg: LLMConfig, prompt_text: str,
                              parts: list[types.Part], slot=None,
                              on_retry: Callable[[LLMError], None] | None = None
                              ) -> dict[str, Any]:
    """One structured call through `client.aio`, retried on transient faults.

    Returns {"task", "queries", ..., "usage": {"input_tokens", "output_tokens", "calls"},
    "repaired": bool}. A schema-invalid answer gets one repair call; a refusal raises
    LLMBlocked at once. `slot()` (an async context manager) gates each attempt.
    """
    return await agenerate_structured(client, cfg, prompt_text, parts, QueryOutput,
                                      queries_check, slot, on_retry)


async def agenerate_structured(client: genai.Client, cfg: LLMConfig, prompt_text: str,
                               parts: list[types.Part], schema: type[pydantic.BaseModel],
                               check: Callable[[dict, Any], dict[str, Any]], slot=None,
                               on_retry: Callable[[LLMError], None] | None = None,
                               repair_hint: str | None = None,
                               first: types.GenerateContentResponse | None = None
                               ) -> dict[str, Any]:
    """`agenerate_pair_json` for any response schema; `check(raw, parsed)` may raise
    LLMBadResponse for a semantically invalid answer (it gets the one repair too).
    `first` is an answer the Batch API already gave to this request: it is checked,
    refused or repaired (online) exactly as a fresh answer would be."""
    config = _config(cfg, schema)
    contents = _contents(prompt_text, parts)
    usage = {"input_tokens": 0, "output_tokens": 0, "calls": 0}
    given = first

    async def call(contents: list[types.Content]) -> types.GenerateContentResponse:
        nonlocal given
        if given is not None:  # a Batch API answer: already paid for, parsed like any other
            resp, given = given, None
            for k, v in _usage(resp).items():
                usage[k] += v
            usage["calls"] += 1
            return resp

        async def attempt() -> types.GenerateContentResponse:
            if slot is None:
                resp = await client.aio.models.generate_content(
                    model=cfg.model, contents=contents, config=config)
            else:
                async with slot():
                    resp = await client.aio.models.generate_content(
                        model=cfg.model, contents=contents, config=config)
            if resp.candidates is None and resp.prompt_feedback is None and resp.usage_metadata is None:
                raise TransientError("empty response body")
            return resp

        resp = await call_with_retry(cfg, attempt, on_retry)
        for k, v in _usage(resp).items():
            usage[k] += v
        usage["calls"] += 1
        return resp

    def failed(exc: LLMError) -> LLMError:
        exc.usage = usage  # a refused or broken answer is still billed
        return exc

    response = await call(contents)
    if (why := _blocked(response)) is not None:
        raise failed(LLMBlocked(why))
    repaired = False
    try:
        result = _parse(response, schema, check)
    except LLMBadResponse as bad:
        previous = response.text or ""
        hint = repair_hint or REPAIR_PROMPT.format(error=str(bad)[:300])
        if repair_hint:
            hint = f"Your previous answer did not match the JSON schema ({str(bad)[:300]}). {hint}"
        repair = contents + [
            types.Content(role="model", parts=[types.Part.from_text(text=previous)]),
            types.Content(role="user", parts=[types.Part.from_text(text=hint)]),
        ]
        response = await call(repair)
        if (why := _blocked(response)) is not None:
            raise failed(LLMBlocked(why)) from None
        try:
            result = _parse(response, schema, check)
        except LLMBadResponse as second:
            raise failed(LLMBadResponse(f"after one repair: {second}")) from None
        repaired = True
    result["usage"] = usage
    result["repaired"] = repaired
    return result


def _config(cfg: LLMConfig, schema: type[pydantic.BaseModel]) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        response_mime_type="application/json", response_json_schema=_json_schema(schema),
        temperature=cfg.temperature, seed=cfg.seed, max_output_tokens=cfg.max_output_tokens,
    )


def _contents(prompt_text: str, parts: list[types.Part]) -> list[types.Content]:
    return [types.Content(role="user", parts=[types.Part.from_text(text=prompt_text), *parts])]


def request_json(cfg: LLMConfig, prompt_text: str, parts: list[types.Part],
                 schema: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The GenerateContentRequest (REST JSON) `agenerate_structured` sends: a Batch API
    line's `request`."""
    c = _config(cfg, schema)
    return {"contents": [x.model_dump(mode="json", by_alias=True, exclude_none=True)
                         for x in _contents(prompt_text, parts)],
            "generationConfig": {"responseMimeType": c.response_mime_type,
                                 "responseJsonSchema": c.response_json_schema,
                                 "temperature": c.temperature, "seed": c.seed,
                                 "maxOutputTokens": c.max_output_tokens}}


def request_parts(request: dict[str, Any]) -> list[types.Part]:
    """The parts after the prompt of a `request_json` body (a repair resends them)."""
    return list(types.Content.model_validate(request["contents"][0]).parts or [])[1:]


def generate_pair_json(client: genai.Client, cfg: LLMConfig, prompt_text: str,
                       parts: list[types.Part]) -> dict[str, Any]:
    """The blocking form of `agenerate_pair_json` (its own short-lived event loop)."""
    return asyncio.run(agenerate_pair_json(client, cfg, prompt_text, parts))
