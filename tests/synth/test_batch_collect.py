"""Batch API answers go through the online path: a refusal is a cached Rejected answer,
a schema-invalid answer gets the one (online) repair, a good one is cached as online
would cache it; a rerun's collect of the same job does not answer twice."""

from __future__ import annotations

from loom.synth.batch import BatchRun, BatchSettings
from loom.synth.calls import rejection
from loom.synth.client import LLMConfig
from loom.synth.offline_server import server_stats, start_server
from loom.synth.stage import SynthConfig, SynthStage, media_parts

from tests.synth.conftest import text_example

TEXTS = ("LOOM_FINISH_SAFETY a red circle", "LOOM_BAD_SCHEMA_ONCE a small black circle",
         "LOOM_BAD_SCHEMA a small square", "a large blue square at the top")


def test_batch_answers_take_the_online_path(tmp_path):
    srv, url = start_server(0)
    cfg = SynthConfig(cache_uri=str(tmp_path / "cache"), base_url=url,
                      llm=LLMConfig(retry_attempts=1), kinds={"text": ["keyword"]})
    stage = SynthStage(cfg)
    rows = [text_example(t) for t in TEXTS]
    calls = [stage.call(ex, "keyword", lambda ex=ex: media_parts(ex)) for ex in rows]
    try:
        counts = BatchRun(stage.calls, cfg.llm.model, str(tmp_path / "work"),
                          BatchSettings(poll_initial_s=0.05, poll_max_s=0.2)).run(calls)
        online = server_stats(url)["requests"]
        answers, stats = stage.calls.run(calls)  # the online pass: every call cached
    finally:
        stage.teardown()
        srv.shutdown()
        srv.server_close()
    assert counts["batch_lines"] == 4 and counts["batch_lines_failed"] == 0
    assert stats["cache_hits"] == 4 and stats["llm_calls"] == 0
    assert rejection(answers[0]) == ("llm_blocked", "response blocked: finish reason SAFETY")
    assert answers[1]["repaired"] is True and answers[1]["queries"]
    assert rejection(answers[2])[0] == "llm_bad_response"
    assert "after one repair" in rejection(answers[2])[1]
    assert answers[3]["queries"] and answers[3]["repaired"] is False
    assert online == 2 == counts["batch_repairs"] + 1  # the two repair calls went online
