"""`loom demo --world multimodal` on a tiny corpus: every modality pair is evaluated with
its baselines, no query is made from a hash, and queries of every modality reach training."""

from __future__ import annotations

import re

import pytest
from loom.jobs.demo import DemoConfig, run_demo
from loom.schemas import manifest as mf

pytestmark = pytest.mark.slow
# The held-out split hashes each asset group (20%): with seed 0 none of the 12 videos is
# held out (chance 0.8**12 ~ 7%), so there is nothing to evaluate video on; seed 3 holds
# out assets of every modality (asserted below, so a changed corpus says why it fails).
CFG = DemoConfig(world="multimodal", images=24, texts=24, pft_epochs=1, ft_epochs=1,
                 batch_size=16, rows_per_shard=64, seed=3)
HEX = re.compile(r"\b[0-9a-f]{6,}\b")


@pytest.fixture(scope="module")
def demo(tmp_path_factory, ray_session):
    return run_demo(str(tmp_path_factory.mktemp("mm")), CFG, log=lambda m: None)


def _table(uri: str, table: str):
    d, m = mf.resolve_input(uri)
    return mf.read_table(d, m, table).to_pylist()


def test_every_modality_pair_with_baselines(demo):
    pairs = _table(demo["stages"]["synth"]["uri"], "pairs")
    held = {p["positive_modality"] for p in pairs if p["split"] == "heldout"}
    assert {"text", "image", "audio", "video", "page", "interleaved"} <= held, held
    ev = demo["eval"]
    synthetic = {"text->image", "text->text", "text->audio", "text->video", "text->page",
                 "text->interleaved", "image->text", "audio->text", "video->text",
                 "page->text", "interleaved->text", "text+image->video"}
    assert synthetic <= set(ev), sorted(ev)
    for name, e in ev.items():
        assert {"r@1", "r@5", "ndcg@10", "random_r@1", "untrained_r@1"} <= set(e), name
        assert e["queries"] > 0 and e["gallery"] > 1, name


def test_no_query_is_built_from_a_hash(demo):
    pairs = _table(demo["stages"]["synth"]["uri"], "pairs")
    written = [p["query_text"] or p["positive_text"] or "" for p in pairs]
    assert written and not [w for w in written if HEX.search(w)]
    assert not [w for w in written if re.search(r"(audio|video) clip \w+$", w)]


def test_queries_of_every_modality_reach_training(demo):
    rows = _table(demo["stages"]["shard_pft"]["uri"], "shards")
    mods = {r["query"]["modality"] for r in rows}
    assert {"text", "image", "audio", "video", "page", "interleaved", "text+image"} <= mods
    for r in rows:
        q = r["query"]
        assert q["tokens"], r["pair_id"]  # the task instruction travels with every query
        if q["modality"] in ("image", "video", "text+image"):
            assert q["pixels"] and q["frames"] >= 1
        if q["modality"] == "audio":
            assert q["features"]
    videos = [r["positive"] for r in rows if r["kind"] == "compose"]
    assert videos and all(v["features"] is None for v in videos)  # frames without the track


def test_mining_reports_every_modality(demo):
    mods = demo["stages"]["mine"]["modalities"]
    assert {"text", "image", "audio", "video", "page", "interleaved"} <= set(mods)
    for m in mods.values():
        assert {"floor", "mean_cosine", "collapsed", "kept", "asked", "fill"} <= set(m)
