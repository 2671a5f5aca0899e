"""Transient faults are retried (honouring the server's retryDelay); refusals and broken
answers become Rejected rows without retries; rate limits hold on the wire."""

from __future__ import annotations

import asyncio

import pytest
from google.genai import errors as genai_errors
from google.genai import types
from loom.synth.client import (
    LLMConfig,
    TransientError,
    agenerate_pair_json,
    classify,
    make_client,
    retry_after,
)
from loom.synth.limits import RateLimits
from loom.synth.offline_server import FAULT_KINDS, Faults, server_stats
from loom.synth.prompts import PromptSet
from loom.synth.stage import SynthConfig, SynthStage

from tests.synth.conftest import batch_of, text_example

PROMPT = PromptSet.load(["keyword"]).text("keyword")
# A timeout long enough that a loaded CI machine never times out a normal answer (a
# spurious retry would break the exact request counts), short enough for the slow fault.
FAST = LLMConfig(timeout_s=2.0, retry_initial_delay_s=0.01, retry_jitter_s=0.01)


@pytest.fixture
def serve(offline_llm):
    return lambda **faults: offline_llm(Faults(**faults))


def _ask(url: str, text: str, cfg: LLMConfig = FAST, errors: list | None = None, slot=None):
    client = make_client(cfg, base_url=url)
    return asyncio.run(agenerate_pair_json(client, cfg, PROMPT, [types.Part.from_text(text=text)],
                                           slot, (errors if errors is not None else []).append))


def test_retry_delay_read_from_body_then_header():
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota",
                      "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                   "retryDelay": "2.5s"}]}}
    assert retry_after(genai_errors.APIError(429, body)) == 2.5

    class Resp:
        headers = {"Retry-After": "7"}

    no_info = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota"}}
    err = genai_errors.APIError(429, no_info, Resp())
    assert retry_after(err) == 7.0
    assert isinstance(classify(err), TransientError) and classify(err).retry_after_s == 7.0
    assert not isinstance(classify(genai_errors.APIError(400, no_info)), TransientError)
    assert isinstance(classify(ValueError("Unterminated string")), TransientError)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_is_retried_to_the_clean_answer(serve, kind):
    clean = _ask(serve(), "a large green square")
    url = serve(share=1.0, kinds=(kind,), retry_after_s=0.05, slow_s=3.0, max_per_request=2)
    errors: list = []
    got = _ask(url, "a large green square", errors=errors)
    assert got["queries"] == clean["queries"] and got["task"] == clean["task"]
    assert len(errors) == 2 and all(isinstance(e, TransientError) for e in errors)
    stats = server_stats(url)
    assert stats["faults"] == {kind: 2} and stats["requests"] == 3


def test_429_waits_for_the_retry_delay(serve):
    url = serve(share=1.0, kinds=("429",), retry_after_s=0.4, max_per_request=1)
    errors: list = []
    _ask(url, "a small red circle", errors=errors)
    assert errors[0].retry_after_s == 0.4
    t = server_stats(url)["times"]
    assert t[1] - t[0] >= 0.4  # the retry came no sooner than the server asked


def test_bounded_attempts(serve):
    url = serve(share=1.0, kinds=("503",), max_per_request=100)
    with pytest.raises(TransientError, match="503"):
        _ask(url, "a small red circle", FAST.model_copy(update={"retry_attempts": 3}))
    assert server_stats(url)["requests"] == 3


def test_refusals_and_bad_answers_become_rejected_rows_unretried(tmp_path, serve):
    url = serve()
    rows = [text_example(t) for t in (
        "LOOM_BLOCK_PROMPT a red circle", "LOOM_FINISH_SAFETY a red circle",
        "LOOM_FINISH_RECITATION a blue square", "LOOM_FINISH_PROHIBITED_CONTENT a green diamond",
        "LOOM_EMPTY_CANDIDATES a big triangle", "LOOM_BAD_SCHEMA a small square",
        "LOOM_BAD_SCHEMA_ONCE a small black circle")]
    cfg = SynthConfig(cache_uri=str(tmp_path / "cache"), base_url=url, llm=FAST,
                      kinds={"text": ["keyword"]})
    stage = SynthStage(cfg)
    try:
        out = stage.process_batch(batch_of(rows))
    finally:
        stage.teardown()
    stats = out.pop("stats").to_pylist()[0]
    rej = {r["record_id"]: (r["reason"], r["message"]) for r in out["rejected"].to_pylist()}
    ids = [r["id"] for r in rows]
    assert rej[ids[0]] == ("llm_blocked", "prompt blocked: SAFETY")
    for i, reason in ((1, "SAFETY"), (2, "RECITATION"), (3, "PROHIBITED_CONTENT")):
        assert rej[ids[i]] == ("llm_blocked", f"response blocked: finish reason {reason}")
    assert rej[ids[4]] == ("llm_blocked", "no candidates in the response")
    assert rej[ids[5]][0] == "llm_bad_response" and "after one repair" in rej[ids[5]][1]
    assert [p["positive_id"] for p in out["pairs"].to_pylist()][:1] == [ids[6]]
    assert stats["repairs"] == 1 and stats["retries"] == 0 and stats["blocked"] == 5
    assert stats["requests"] == 9 and stats["input_tokens"] > 0  # refusals are billed too
    # one request per refusal, two (answer + repair) per broken answer: nothing retried
    assert server_stats(url)["requests"] == 5 + 2 + 2
    again = SynthStage(cfg)  # refusals are cached: a rerun pays nothing
    try:
        out2 = again.process_batch(batch_of(rows))
    finally:
        again.teardown()
    assert out2.pop("stats").to_pylist()[0]["llm_calls"] == 0
    assert out2["rejected"].equals(out["rejected"])
    assert server_stats(url)["requests"] == 9


def test_concurrency_cap_and_request_bucket(tmp_path, serve):
    url = serve(latency_s=0.05)
    rows = [text_example(f"a small red circle number {i} at the top") for i in range(16)]
    cfg = SynthConfig(cache_uri=str(tmp_path / "c1"), base_url=url, llm=FAST,
                      kinds={"text": ["keyword"]}, limits=RateLimits(concurrency=3))
    stage = SynthStage(cfg)
    try:
        stage.process_batch(batch_of(rows))
    finally:
        stage.teardown()
    assert 2 <= server_stats(url)["max_in_flight"] <= 3  # many in flight, never past the cap

    url = serve()
    limits = RateLimits(concurrency=32, requests_per_minute=240, period_s=1.0)  # 4 per second
    cfg = cfg.model_copy(update={"base_url": url, "cache_uri": str(tmp_path / "c2"),
                                 "limits": limits})
    stage = SynthStage(cfg)
    try:
        stage.process_batch(batch_of(rows[:12]))
    finally:
        stage.teardown()
    times = server_stats(url)["times"]
    assert len(times) == 12
    # On the wire, never more than a bucket plus a second's refill in any second. (The exact
    # schedule is checked on a virtual clock in test_limits.py: a wall-clock lower bound
    # here would pass a broken limiter on a slow machine.)
    assert max(sum(1 for u in times if t <= u < t + 1.0) for t in times) <= 8 + 1
