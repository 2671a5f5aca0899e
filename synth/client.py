"""The LLM client: one google-genai Client for the offline server, Gemini or Vertex.

The backend is always chosen by configuration; an API key in the environment never
switches it. Keys are read from the environment at client build time, passed only to
the SDK, and never stored in a config, a record, a log line or an exception message.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

import pydantic
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
    retry_attempts: int = 3
    retry_initial_delay_s: float = 1.0

    def generation_config(self) -> dict[str, Any]:
        """What is sent besides the prompt (recorded on every Pair, part of the cache key)."""
        return {"temperature": self.temperature, "seed": self.seed,
                "max_output_tokens": self.max_output_tokens,
                "response_mime_type": "application/json"}


class QueryOutput(pydantic.BaseModel):
    task: str
    queries: list[str]


class LLMError(RuntimeError):
    """The call failed (HTTP error after retries, connection error, timeout)."""


class LLMBlocked(LLMError):
    """The model refused: a prompt block reason or a safety-type finish reason."""


class LLMBadResponse(LLMError):
    """The model answered, but not with the structured output asked for."""


def _http_options(cfg: LLMConfig, base_url: str | None, **kw: Any) -> types.HttpOptions:
    retry = types.HttpRetryOptions(attempts=cfg.retry_attempts,
                                   initial_delay=cfg.retry_initial_delay_s, max_delay=10.0)
    return types.HttpOptions(base_url=base_url, timeout=int(cfg.timeout_s * 1000),
                             retry_options=retry, **kw)


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
        return genai.Client(vertexai=True, project=cfg.project, location=cfg.location,
                            http_options=_http_options(cfg, base_url))
    raise ValueError(f"unknown backend {cfg.backend!r}")


def generate_pair_json(client: genai.Client, cfg: LLMConfig, prompt_text: str,
                       parts: list[types.Part]) -> dict[str, Any]:
    """One structured call: {"task": str, "queries": [str, ...], ...} or a typed error."""
    config = types.GenerateContentConfig(
        response_mime_type="application/json", response_schema=QueryOutput,
        temperature=cfg.temperature, seed=cfg.seed, max_output_tokens=cfg.max_output_tokens,
    )
    contents = [types.Content(role="user", parts=[types.Part.from_text(text=prompt_text), *parts])]
    try:
        response = client.models.generate_content(model=cfg.model, contents=contents, config=config)
    except genai_errors.APIError as exc:
        raise LLMError(f"HTTP {exc.code} {exc.status}: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001 - transport errors (httpx) after retries
        raise LLMError(f"{type(exc).__name__}: {exc}") from None
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        reason = getattr(feedback.block_reason, "value", feedback.block_reason)
        raise LLMBlocked(f"prompt blocked: {reason}")
    if not response.candidates:
        raise LLMBadResponse("no candidates in the response")
    finish = response.candidates[0].finish_reason
    finish_name = getattr(finish, "value", finish)
    if finish_name in _BLOCK_FINISH:
        raise LLMBlocked(f"response blocked: finish reason {finish_name}")
    text = response.text
    try:
        raw = json.loads(text or "")
        out = QueryOutput.model_validate(raw)
    except (ValueError, pydantic.ValidationError) as exc:
        raise LLMBadResponse(f"unparsable structured output (finish {finish_name}): "
                             f"{type(exc).__name__}") from None
    queries = [q.strip() for q in out.queries if isinstance(q, str) and q.strip()]
    if not queries:
        raise LLMBadResponse("structured output has no queries")
    result = dict(raw) | {"task": out.task.strip(), "queries": queries}
    result["model_version"] = response.model_version
    return result
