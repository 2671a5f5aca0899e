"""Eval any-to-any on a small constructed corpus: one task per (query modality, target
modality, source), galleries cut to the positives' parts, baselines for every pair."""

from __future__ import annotations

import hashlib
import json
import uuid

import numpy as np
import pytest
from loom.pipelines.evaluate import baseline_sample, run_eval
from loom.pipelines.ray import evaluate as ray_evaluate
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import EXAMPLE, PAIR, empty_part, to_table
from loom.schemas.spec import SPEC_FILE, PreprocessingSpec
from loom.transforms.natural_pairs import natural_pairs
from loom.transforms.tokenizer import TextTokenizer, train_tokenizer

from tests.checkpoints import tiny_checkpoint

N = 12
HELDOUT = 0.999  # every asset held out: the whole corpus is the gallery


def _px(kind: str, value: int, frames: int = 1) -> dict:
    arr = np.full((frames, 48, 48, 3), value, np.uint8)
    return empty_part(kind) | {"pixels": arr.tobytes(), "pixel_format": "raw", "height": 48,
                               "width": 48, "frames": frames}


def _ex(eid: str, modality: str, parts: list[dict]) -> dict:
    return {"id": eid, "modality": modality, "parts": parts, "source_uris": [f"mem://{eid}"],
            "mime": None, "size_bytes": 1, "metadata": json.dumps({})}


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_session):  # Ray after the GCS emulator: workers reach gs://
    base = tmp_path_factory.mktemp("eval_any")
    words = [f"word{i} colour{i} thing{i}" for i in range(N)]
    tok_json = train_tokenizer(words + ["Title one", "retrieve the video"], 300)
    tok = TextTokenizer.from_json(tok_json)
    spec = PreprocessingSpec(tokenizer_json=tok_json, image_codec="raw")

    def text(t: str) -> dict:
        return empty_part("text") | {"text": t, "tokens": tok.encode(t, 64)}

    audio = empty_part("audio") | {"features": [0.1] * 64 * 4, "feature_bins": 64, "frames": 4}
    examples = []
    for i in range(N):
        examples.append(_ex(f"rec{i:02d}", "interleaved", [text(words[i]), _px("image", 10 * i)]))
        examples.append(_ex(f"vid{i:02d}", "video", [_px("video", 10 * i, 3), audio]))
        examples.append(_ex(f"txt{i:02d}", "text", [text(f"Title {i}\n{words[i]} body")]))
    ex_w = mf.VersionWriter(str(base / "examples"), "ingest", "ingest-x")
    files = [ex_w.write_part("examples", "part-0", to_table(examples, EXAMPLE))]
    storage.write_bytes(storage.join(ex_w.dir, SPEC_FILE), spec.model_dump_json().encode())
    ex_w.commit({"examples": files}, {"examples": len(examples)}, {}, {})
    pairs = [p for e in examples for p in natural_pairs(e, heldout_fraction=HELDOUT)]
    for i in range(N):  # synthetic kinds: text+image->video, image->written text
        frame = _px("image", 10 * i)
        pairs.append(dict.fromkeys(PAIR.names) | {
            "pair_id": f"c{i}", "task": "retrieve the video", "kind": "compose",
            "query_text": words[i], "query_parts": [frame], "query_modality": "text+image",
            "positive_id": f"vid{i:02d}", "positive_parts": [0], "positive_modality": "video",
            "split": "heldout", "prompt_version": "compose.v1", "model": "m",
            "backend": "offline", "source": "synthetic"})
        pairs.append(dict.fromkeys(PAIR.names) | {
            "pair_id": f"d{i}", "task": None, "kind": "describe", "query_text": "",
            "query_ref": {"example_id": f"rec{i:02d}", "parts": None},
            "query_modality": "interleaved",
            "positive_id": "t:" + hashlib.sha256(words[i].encode()).hexdigest()[:8],
            "positive_text": words[i] + " written", "positive_modality": "text",
            "split": "heldout", "prompt_version": "describe.v1", "model": "m",
            "backend": "offline", "source": "synthetic"})
    p_w = mf.VersionWriter(str(base / "pairs"), "synth", "synth-x")
    files = [p_w.write_part("pairs", "part-0", to_table(pairs, PAIR))]
    p_w.commit({"pairs": files}, {"pairs": len(pairs)}, {"heldout_fraction": HELDOUT},
               {"examples": ex_w.dir})
    ckpts = str(base / "ckpts")
    ckpt = tiny_checkpoint(ckpts, "run", spec)
    out = run_eval(p_w.dir, ckpt, ckpts, str(base / "eval"))
    return {"out": out, "pairs": pairs, "base": base, "pairs_dir": p_w.dir, "ckpt": ckpt,
            "ckpts": ckpts}


def test_every_pair_present_with_its_baselines(world):
    ev = world["out"]["eval"]
    assert set(ev) == {"text->image:natural", "image->text:natural", "text->text:natural",
                       "video->audio:natural", "audio->video:natural",
                       "text+image->video", "interleaved->text"}
    for name, e in ev.items():
        assert {"r@1", "r@5", "ndcg@10", "random_r@1", "untrained_r@1"} <= set(e), name
        assert e["queries"] == N, name
        # no ground truth: relevant is the positive's asset group, one gallery item, except
        # a title, whose body (inline) and passage (the corpus asset) are both relevant
        relevant = 2 if name == "text->text:natural" else 1
        assert e["random_r@1"] == pytest.approx(relevant / e["gallery"]), name
    assert "lexical_r@1" in ev["text->text:natural"] and "lexical_r@1" not in ev["text->image:natural"]
    assert ev["text->text:natural"]["lexical_r@1"] == 1.0  # the title's words are in its passage


def test_galleries_cut_to_the_positives_parts(world):
    ev = world["out"]["eval"]
    # videos as frames only (their audio track is the other side of av_track pairs)
    assert ev["text+image->video"]["gallery"] == N and ev["audio->video:natural"]["gallery"] == N
    assert ev["video->audio:natural"]["gallery"] == N  # the clips' own tracks
    # written positives join the text gallery, beside the corpus' text assets
    assert ev["interleaved->text"]["gallery"] == N + N
    # a record's image is a target of its caption; the corpus has no standalone images
    assert ev["text->image:natural"]["gallery"] == N
    assert ev["text->text:natural"]["gallery"] == N + N  # passages and their bodies


def test_baseline_sample_is_capped_seeded_and_keeps_what_it_scores():
    relevant = [{i, 100 + i} for i in range(40)]
    rows, queries = baseline_sample(500, relevant, 50, seed=1)
    assert len(rows) == 50 and len(set(rows.tolist())) == 50 and rows.max() < 500
    assert len(queries) == 25  # two relevant items each: 25 queries fill the cap
    assert all(relevant[q] <= set(rows.tolist()) for q in queries)
    again = baseline_sample(500, relevant, 50, seed=1)
    assert (again[0] == rows).all() and (again[1] == queries).all()
    assert not (baseline_sample(500, relevant, 50, seed=2)[0] == rows).all()
    rows, queries = baseline_sample(500, relevant[:5], 50, seed=1)
    assert len(rows) == 50 and len(queries) == 5  # all queries, then distractors
    assert baseline_sample(50, relevant, 50, seed=1) is None


def test_baselines_read_a_capped_gallery(world, monkeypatch):
    """A gallery over the cap: BM25 and the untrained model read exactly `cap` items (the
    JSON says so); the checkpoint's own figures and the random baseline keep the whole."""
    calls = []
    real = ray_evaluate.baseline_metrics

    class Spy:  # what each task's baselines are given to read, on their worker
        @staticmethod
        def remote(ex_dir, ex_manifest, handler, untrained, queries, rows, inline, relevant,
                   lexical):
            calls.append(("embed", len(queries), len(rows) + len(inline)))
            if lexical is not None:
                calls.append(("bm25", len(lexical[0]), len(lexical[1])))
            return real.remote(ex_dir, ex_manifest, handler, untrained, queries, rows, inline,
                               relevant, lexical)

    monkeypatch.setattr(ray_evaluate, "baseline_metrics", Spy)
    out = run_eval(world["pairs_dir"], world["ckpt"], world["ckpts"],
                   str(world["base"] / "eval-capped"), baseline_cap=15)
    ev, full = out["eval"], world["out"]["eval"]
    capped = {n for n, e in full.items() if e["gallery"] > 15}
    assert capped >= {"interleaved->text", "text->text:natural"}
    for name, e in ev.items():
        assert e["gallery"] == full[name]["gallery"] and e["r@1"] == full[name]["r@1"]
        assert e["random_r@1"] == full[name]["random_r@1"]
        if name in capped:
            queries = e["baseline_sample"]["queries"]
            assert e["baseline_sample"] == {"gallery": e["gallery"], "cap": 15, "seed": 0,
                                            "queries": queries} and 0 < queries <= N
        else:
            assert "baseline_sample" not in e and e["untrained_r@1"] == full[name]["untrained_r@1"]
    # a text->text query has two relevant items: 7 queries fit in 15, then one distractor
    assert ev["text->text:natural"]["baseline_sample"]["queries"] == 7
    assert ev["interleaved->text"]["baseline_sample"]["queries"] == N
    assert ("bm25", 7, 15) in calls and all(c[2] == 15 for c in calls if c[0] == "bm25")
    sizes = [c[2] for c in calls if c[0] == "embed"]
    assert sizes.count(15) == len(capped) and max(sizes) == 15  # never a whole gallery
    assert len(sizes) == len(ev)  # every task's baselines, each on a worker


def test_gallery_is_embedded_through_the_cache_by_workers(world):
    """The checkpoint's vectors come from the per-checkpoint embedding cache (mine's),
    written by the workers: every gallery Example (cut to its task's parts) is there, and
    a second eval with the same checkpoint and cache embeds nothing and scores the same."""
    from loom.pipelines.embed_cache import CACHE_DIR

    first = world["out"]
    cache_dir = first["embedding"]["cache"]
    assert cache_dir.startswith(storage.join(str(world["base"] / "eval"), CACHE_DIR))
    cached = storage.read_parquet([f.uri for f in storage.list_files(cache_dir, ".parquet")],
                                  columns=["id", "digest"])
    ids = cached.column("id").to_pylist()
    for prefix in ("rec", "vid", "txt"):  # every held-out asset of each gallery
        assert {f"{prefix}{i:02d}" for i in range(N)} <= set(ids), prefix
    # videos twice: as frames (their own gallery) and as the audio track (video->audio)
    assert sum(i.startswith("vid") for i in ids) == 2 * N
    assert first["embedding"]["embedded"] == len(set(zip(ids, cached.column("digest")
                                                            .to_pylist(), strict=True)))
    again = run_eval(world["pairs_dir"], world["ckpt"], world["ckpts"],
                     str(world["base"] / "eval-again"), cache_root=str(world["base"] / "eval"))
    assert again["version"] == first["version"] and not again["reused"]
    assert again["embedding"] == {"embedded": 0, "cache": cache_dir}
    assert again["eval"] == first["eval"]


def test_eval_on_gcs(world, gcs):
    """Output and cache on gs:// (nodes share no disk): the workers write the plans and
    cache parts there, the driver fills its vectors from them; the same figures, the work
    folder cleaned, and a second eval on that cache embeds nothing."""
    root = f"gs://{gcs.bucket}/eval-{uuid.uuid4().hex[:8]}"
    out = run_eval(world["pairs_dir"], world["ckpt"], world["ckpts"], root)
    assert out["eval"] == world["out"]["eval"] and out["version"] == world["out"]["version"]
    cache_dir = out["embedding"]["cache"]
    assert cache_dir == f"{root}/_embeddings/{world['out']['embedding']['cache'].rsplit('/', 1)[1]}"
    assert storage.list_files(cache_dir, ".parquet")
    assert out["embedding"]["embedded"] == world["out"]["embedding"]["embedded"]
    assert not storage.list_files(storage.join(out["uri"], mf.WORK))
    again = run_eval(world["pairs_dir"], world["ckpt"], world["ckpts"], f"{root}-again",
                     cache_root=root)
    assert again["embedding"]["embedded"] == 0 and again["eval"] == out["eval"]
