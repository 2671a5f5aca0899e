from __future__ import annotations

import logging
import pickle
import random

from loom.schemas.records import PAIR, REJECTED
from loom.synth.client import LLMConfig
from loom.synth.stage import SynthConfig, SynthStage
from loom.transforms import scenes

from tests.key_leak import PLANTED_KEY, leaks
from tests.synth.conftest import batch_of, image_example, text_example


def _batch(tmp_path, n=4):
    rng = random.Random(11)
    rows = []
    for _ in range(n):
        scene = scenes.random_scene(rng)
        rows.append(image_example(tmp_path, scene, rng))
        rows.append(text_example(scenes.describe(scene, rng)))
    return rows


def test_stage_pairs_and_cache(tmp_path, server_url):
    cfg = SynthConfig(cache_uri=str(tmp_path / "cache"), base_url=server_url)
    rows = _batch(tmp_path)
    stage = SynthStage(cfg)
    stage.setup()
    out = stage.process_batch(batch_of(rows))
    stats = out.pop("stats").to_pylist()[0]
    assert set(out) == {"pairs", "rejected"}
    assert out["pairs"].schema.equals(PAIR) and out["rejected"].schema.equals(REJECTED)
    assert out["rejected"].num_rows == 0
    pairs = out["pairs"].to_pylist()
    # images: caption, keyword and describe (image->text); texts: keyword, question
    assert stats["llm_calls"] == 20 and stats["cache_hits"] == 0
    assert stage.calls.totals["llm_calls"] == 20
    assert stats["requests"] == 20 and stats["retries"] == 0 and stats["input_tokens"] > 0
    assert all(p["input_tokens"] > 0 and p["output_tokens"] > 0 for p in pairs)
    text_q = [p for p in pairs if p["query_modality"] == "text"]
    assert {p["positive_id"] for p in text_q} == {r["id"] for r in rows}
    assert {p["kind"] for p in text_q if p["positive_modality"] == "image"} == {"caption", "keyword"}
    assert {p["kind"] for p in text_q if p["positive_modality"] == "text"} == {"keyword", "question"}
    described = [p for p in pairs if p["kind"] == "describe"]
    images = {r["id"] for r in rows if r["modality"] == "image"}
    assert {p["query_ref"]["example_id"] for p in described} == images
    assert all(p["query_modality"] == "image" and p["positive_modality"] == "text"
               and p["positive_text"] and p["positive_id"].startswith("t:")
               and p["query_text"] == "" for p in described)
    assert len({p["pair_id"] for p in pairs}) == len(pairs)
    assert all(p["source"] == "synthetic" and p["group"] for p in pairs)
    versions = {"caption": "caption.v2", "keyword": "keyword.v2", "question": "question.v2",
                "describe": "describe.v1"}
    assert all(p["backend"] == "offline" and p["prompt_version"] == versions[p["kind"]]
               for p in pairs)

    again = SynthStage(cfg)  # a fresh worker over the same cache
    out2 = again.process_batch(batch_of(rows))
    stats2 = out2.pop("stats").to_pylist()[0]
    assert stats2["llm_calls"] == 0 and stats2["cache_hits"] == 20 and stats2["input_tokens"] == 0
    assert again.calls.totals["llm_calls"] == 0 and again.calls.totals["cache_hits"] == 20
    assert out2["pairs"].equals(out["pairs"])
    again.teardown()
    stage.teardown()


def test_in_process_server_and_pickle(tmp_path):
    stage = SynthStage(SynthConfig(cache_uri=str(tmp_path / "c")))
    stage.setup()  # offline without base_url: starts an in-process server
    clone = pickle.loads(pickle.dumps(stage))
    try:
        out = clone.process_batch(batch_of([text_example("A small black diamond at the bottom.")]))
        assert [p["query_text"] for p in out["pairs"].to_pylist()][0] == "small black diamond bottom"
    finally:
        clone.teardown()
        stage.teardown()


def test_bad_examples_become_rejected_rows(tmp_path, server_url):
    rng = random.Random(5)
    scene = scenes.random_scene(rng)
    unreadable = image_example(tmp_path, scene, rng, write=False, pixels=False)
    garbage = image_example(tmp_path, scene, rng, write=False, pixels=False)
    (tmp_path / "garbage.png").write_bytes(b"definitely not an image")
    garbage["source_uris"] = [str(tmp_path / "garbage.png")]
    empty = text_example("   ")
    fallback = image_example(tmp_path, scene, rng, write=False)  # pixels only
    stage = SynthStage(SynthConfig(cache_uri=str(tmp_path / "cache"), base_url=server_url))
    out = stage.process_batch(batch_of([unreadable, garbage, empty, fallback]))
    rej = {(r["record_id"], r["reason"]) for r in out["rejected"].to_pylist()}
    assert (unreadable["id"], "unreadable") in rej
    assert (garbage["id"], "llm_error") in rej
    assert (empty["id"], "empty") in rej
    owners = {(p["query_ref"] or {}).get("example_id") or p["positive_id"]
              for p in out["pairs"].to_pylist()}  # describe pairs: the image is the query
    assert owners == {fallback["id"]}
    assert all(r["stage"] == "synth" for r in out["rejected"].to_pylist())


def test_gemini_key_never_leaks(tmp_path, server_url, monkeypatch, caplog, capfd):
    """The stage alone (fast); tests/pipelines/test_key_leak.py runs the whole chain."""
    key = PLANTED_KEY
    monkeypatch.setenv("GEMINI_API_KEY", key)
    caplog.set_level(logging.DEBUG)
    rng = random.Random(9)
    scene = scenes.random_scene(rng)
    good = image_example(tmp_path, scene, rng)
    bad = image_example(tmp_path, scene, rng, write=False, pixels=False)
    (tmp_path / "bad.png").write_bytes(b"junk")
    bad["source_uris"] = [str(tmp_path / "bad.png")]
    cfg = SynthConfig(cache_uri=str(tmp_path / "cache"),
                      llm=LLMConfig(backend="gemini", base_url=server_url))
    stage = SynthStage(cfg)
    out = stage.process_batch(batch_of([good, bad, text_example("")]))
    out.pop("stats")
    # the junk image once per image kind (3), the empty text once per text kind (2)
    assert out["pairs"].num_rows > 0 and out["rejected"].num_rows == 5
    assert {p["backend"] for p in out["pairs"].to_pylist()} == {"gemini"}
    captured = capfd.readouterr()
    blob = " ".join([str(out["pairs"].to_pylist()), str(out["rejected"].to_pylist()),
                     caplog.text, captured.out, captured.err, cfg.model_dump_json(),
                     repr(stage.__getstate__())])
    assert leaks(blob) == []
