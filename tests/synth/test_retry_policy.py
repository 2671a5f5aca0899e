"""The retry policy on a virtual clock: which errors are retried, how many attempts, and the
exact back-off (exponential, capped, or the server's retryDelay) between them."""

from __future__ import annotations

import asyncio

import pytest
from google.genai import errors as genai_errors
from loom.synth.client import (
    RETRY_CODES,
    LLMConfig,
    LLMError,
    TransientError,
    call_with_retry,
    classify,
    retry_after,
)

from tests.synth.virtual_clock import run_virtual

NO_JITTER = LLMConfig(retry_attempts=6, retry_initial_delay_s=1.0, retry_max_delay_s=10.0,
                      retry_jitter_s=0.0, timeout_s=5.0)


def _api_error(code: int, details: list | None = None, headers: dict | None = None):
    body = {"error": {"code": code, "status": "X", "message": "m", "details": details or []}}

    class Resp:
        pass

    resp = Resp()
    resp.headers = headers or {}
    return genai_errors.APIError(code, body, resp)


def _failing(errors: list[BaseException], value="ok"):
    """An attempt that raises errors[i] on try i, then returns value; logs virtual times."""
    times: list[float] = []

    async def attempt():
        times.append(asyncio.get_running_loop().time())
        if len(times) <= len(errors):
            raise errors[len(times) - 1]
        return value

    return attempt, times


def test_backoff_doubles_then_caps():
    attempt, times = _failing([TransientError("x")] * 5)
    retried: list[LLMError] = []
    assert run_virtual(call_with_retry(NO_JITTER, attempt, retried.append)) == "ok"
    gaps = [round(b - a, 6) for a, b in zip(times, times[1:], strict=False)]
    assert gaps == [1.0, 2.0, 4.0, 8.0, 10.0]  # 1 x 2^(n-1), capped at 10
    assert len(retried) == 5 and all(isinstance(e, TransientError) for e in retried)


def test_attempts_are_bounded_and_the_last_error_raised():
    attempt, times = _failing([TransientError(f"e{i}") for i in range(10)])
    with pytest.raises(TransientError, match="e5"):
        run_virtual(call_with_retry(NO_JITTER, attempt))
    assert len(times) == 6
    cfg = NO_JITTER.model_copy(update={"retry_attempts": 0})  # still one try
    attempt, times = _failing([TransientError("x")])
    with pytest.raises(TransientError):
        run_virtual(call_with_retry(cfg, attempt))
    assert len(times) == 1


def test_non_transient_is_not_retried():
    attempt, times = _failing([_api_error(400)])
    with pytest.raises(LLMError, match="HTTP 400") as info:
        run_virtual(call_with_retry(NO_JITTER, attempt))
    assert not isinstance(info.value, TransientError) and len(times) == 1


def test_server_retry_delay_wins_capped():
    info = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3.5s"}]
    attempt, times = _failing([_api_error(429, info), _api_error(503, headers={"Retry-After": "30"}),
                               _api_error(500, headers={"Retry-After": "-4"})])
    assert run_virtual(call_with_retry(NO_JITTER, attempt)) == "ok"
    gaps = [round(b - a, 6) for a, b in zip(times, times[1:], strict=False)]
    # asked 3.5 s (longer than the 1 s back-off): 3.5; asked 30: capped at 10; asked < 0: 0
    assert gaps == [3.5, 10.0, 0.0]


def test_jitter_is_bounded(monkeypatch):
    cfg = NO_JITTER.model_copy(update={"retry_jitter_s": 0.5})
    seen = []

    def uniform(a, b):
        seen.append((a, b))
        return b  # the largest jitter

    monkeypatch.setattr("loom.synth.client.random.uniform", uniform)
    attempt, times = _failing([TransientError("x"), TransientError("y", retry_after_s=2.0)])
    run_virtual(call_with_retry(cfg, attempt))
    gaps = [round(b - a, 6) for a, b in zip(times, times[1:], strict=False)]
    assert gaps == [1.5, 2.5]
    assert set(seen) == {(0, 0.5)}


def test_a_hung_attempt_times_out_and_is_retried():
    cfg = NO_JITTER.model_copy(update={"timeout_s": 2.0, "retry_attempts": 2})
    calls = []

    async def attempt():
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            await asyncio.sleep(3600)
        return "late"

    assert run_virtual(call_with_retry(cfg, attempt)) == "late"
    assert [round(t, 6) for t in calls] == [0.0, 4.0]  # timeout_s + 1, then 1 s back-off


@pytest.mark.parametrize("code", sorted(RETRY_CODES))
def test_retry_codes_are_transient(code):
    err = classify(_api_error(code))
    assert isinstance(err, TransientError) and f"HTTP {code}" in str(err)


@pytest.mark.parametrize("code", [400, 401, 403, 404, 409, 422, 501])
def test_other_codes_are_final(code):
    err = classify(_api_error(code))
    assert isinstance(err, LLMError) and not isinstance(err, TransientError)
    assert f"HTTP {code} X: m" == str(err)


def test_classify_keeps_typed_errors_and_wraps_the_rest():
    typed = LLMError("already")
    assert classify(typed) is typed
    wrapped = classify(ConnectionResetError("peer " + "x" * 500))
    assert isinstance(wrapped, TransientError)
    assert str(wrapped).startswith("ConnectionResetError: peer ")
    assert len(str(wrapped)) == len("ConnectionResetError: ") + 200  # the message, cut at 200
    assert wrapped.retry_after_s is None


def test_retry_after_sources():
    info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": " 2.5s "}
    assert retry_after(_api_error(429, [info])) == 2.5
    other = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "retryDelay": "9s"}
    assert retry_after(_api_error(429, [other])) is None
    assert retry_after(_api_error(429, [other, info])) == 2.5
    bad = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "soon"}
    assert retry_after(_api_error(429, [bad], {"Retry-After": "4"})) == 4.0
    assert retry_after(_api_error(429, headers={"retry-after": "6"})) == 6.0
    assert retry_after(_api_error(429, headers={"Retry-After": "Wed, 21 Oct"})) is None
    assert retry_after(_api_error(429)) is None
    assert retry_after(ValueError("not an API error")) is None
    flat = genai_errors.APIError(429, {"code": 429, "details": [info]})  # no "error" wrapper
    assert retry_after(flat) == 2.5


def test_retry_after_tolerates_odd_bodies_and_no_response():
    assert retry_after(genai_errors.APIError(429, {"error": "quota"})) is None  # not a dict
    no_info = {"error": {"code": 429, "status": "X", "message": "m"}}
    assert retry_after(genai_errors.APIError(429, no_info)) is None  # no response object
