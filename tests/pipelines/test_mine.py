"""`run_mine` end to end with a real tiny checkpoint: cache, exclusions, quotas, output."""

from __future__ import annotations

import io
import json
import pathlib
import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest
from loom.jobs.corpus import generate_corpus
from loom.pipelines.common import BadInput
from loom.pipelines.embed_cache import EmbeddingCache, item_digest
from loom.pipelines.ingest import run_ingest
from loom.pipelines.mine import run_mine
from loom.pipelines.synth import run_synth
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.spec import SPEC_FILE
from loom.schemas.splits import example_split
from loom.transforms.items import example_to_item
from loom.transforms.mining import MiningConfig
from PIL import Image

from tests.checkpoints import examples_spec, tiny_checkpoint

COPIES = 8  # images re-encoded with other bytes: other ids, the same pixels


@pytest.fixture(scope="module")
def env(tmp_path_factory, ray_session):
    base = tmp_path_factory.mktemp("mine")
    generate_corpus(str(base / "c"), 16, 12, seed=3)
    images = sorted((base / "c" / "media").rglob("img-*.png"))[:COPIES]
    for p in images:  # planted duplicates: same decoded pixels, different file bytes
        buf = io.BytesIO()
        Image.open(p).save(buf, format="PNG", compress_level=1)
        (p.parent / f"recoded-{p.name}").write_bytes(buf.getvalue())
    ingest = run_ingest(str(base / "c" / "media"), str(base / "examples"))
    synth = run_synth(ingest["uri"], str(base / "pairs"))
    spec = examples_spec(ingest["uri"])
    ckpts = str(base / "ckpt")
    ckpt = tiny_checkpoint(ckpts, "run-a", spec)
    mix = MiningConfig(negatives=2, cross_modal={"image": 1, "text": 1})
    first = run_mine(synth["uri"], str(base / "triples"), "latest", ckpts, mix)
    second = run_mine(synth["uri"], str(base / "triples"), ckpt, ckpts,
                      MiningConfig(negatives=3, false_negative=("perc_pos", "margin")))
    examples = mf.read_table(*mf.resolve_input(ingest["uri"]), "examples").to_pylist()
    pairs = mf.read_table(*mf.resolve_input(synth["uri"]), "pairs").to_pylist()
    return {"base": base, "first": first, "second": second, "ckpt": ckpt, "ckpts": ckpts,
            "examples": {e["id"]: e for e in examples}, "pairs": pairs, "synth": synth}


def _triples(out: dict) -> list[dict]:
    d, m = mf.resolve_input(out["uri"])
    return mf.read_table(d, m, "triples").to_pylist()


def test_second_run_embeds_nothing(env):
    first, second = env["first"], env["second"]
    assert first["checkpoint"] == second["checkpoint"] == env["ckpt"]  # `latest` resolved once
    assert first["version"] != second["version"] and not second["reused"]
    n = first["counts"]["corpus"]
    train = [p for p in env["pairs"] if p["split"] == "train"]
    # a query is its instruction + text, or an Example (image->text pairs) + instruction,
    # embedded once per distinct content; a written positive (an LLM's description) too
    examples = env["examples"]
    queries = {(p["task"], p["query_text"],
                item_digest(example_to_item(examples[p["query_ref"]["example_id"]]))
                if p["query_ref"] else None) for p in train}
    written = [p["positive_text"] for p in train if p["positive_text"]]
    assert written and any(p["query_ref"] for p in train)
    assert first["counts"]["embedded"] == n + len(queries | {("text", w, None) for w in written})
    assert first["counts"]["cache_hits"] == 0
    assert second["counts"]["embedded"] == 0
    assert second["counts"]["cache_hits"] == n + first["counts"]["triples"] + len(written)
    assert second["cache"] == first["cache"]
    again = run_mine(env["synth"]["uri"], str(env["base"] / "triples"), env["ckpt"], env["ckpts"],
                     MiningConfig(negatives=2, cross_modal={"image": 1, "text": 1}))
    assert again["reused"] and again["version"] == first["version"]
    assert again["search"] == first["search"] and again["checkpoint"] == env["ckpt"]


def test_negatives_respect_exclusions_and_quotas(env):
    examples, triples = env["examples"], _triples(env["first"])
    digest = {i: item_digest(example_to_item(e)) for i, e in examples.items()}
    copies = {}
    for i in examples:
        copies.setdefault(digest[i], set()).add(i)
    planted = [ids for ids in copies.values() if len(ids) > 1]
    assert len(planted) == COPIES
    assert triples and {t["positive_modality"] for t in triples} >= {"image", "text"}
    profile = env["first"]["modalities"]
    for t in triples:
        pm = t["positive_modality"]
        by_mod: dict[str, int] = {}
        anchor = (t["query_ref"] or {}).get("example_id")
        for n in t["negatives"]:
            # held-out asset groups (near-duplicates together) are never candidates
            assert n["id"] != t["positive_id"] and example_split(examples[n["id"]]).value == "train"
            if not t["positive_text"]:  # a written positive has no corpus twin
                assert digest[n["id"]] != digest[t["positive_id"]]  # never a planted duplicate
            assert n["id"] != anchor  # an image->text query never gets itself back
            assert n["modality"] == examples[n["id"]]["modality"]
            # PercPos on either side of zero, above the modality's floor (0 when spread):
            # 5% of |ps - floor| below ps
            floor, ps = profile[n["modality"]]["floor"], t["positive_score"]
            assert n["score"] - floor <= (ps - floor) - 0.05 * abs(ps - floor) + 1e-6, \
                (t["pair_id"], ps, floor, n)
            by_mod[n["modality"]] = by_mod.get(n["modality"], 0) + 1
        quota = {pm: 2} | {m: 1 for m in ("image", "text") if m != pm}
        assert all(by_mod.get(m, 0) <= q for m, q in quota.items()), t["pair_id"]
        assert set(by_mod) <= set(quota)
        order = [pm] + sorted(m for m in by_mod if m != pm)  # round robin, the positive's first
        expect = [m for i in range(max(by_mod.values(), default=0)) for m in order
                  if by_mod.get(m, 0) > i]
        assert [n["modality"] for n in t["negatives"]] == expect
    c = env["first"]["counts"]
    assert c["negatives"] == sum(len(t["negatives"]) for t in triples)
    assert c["negatives"] == c["kept.image"] + c["kept.text"]
    assert c["filtered.positive"] > 0 and c["heldout_excluded"] > 0
    assert c["filtered.duplicate"] > 0  # the planted copies were candidates, and were dropped
    assert c["corpus"] + c["heldout_excluded"] == len(examples)


def test_output_is_plain_parquet_with_lineage(env):
    out = env["second"]
    d, m = mf.resolve_input(out["uri"])
    table = pq.read_table(pathlib.Path(d) / m.tables["triples"][0].path)
    rows = table.to_pylist()
    row = rows[0]
    assert set(row) >= {"query_text", "positive_id", "negatives", "checkpoint", "mining_config"}
    assert row["checkpoint"] == env["ckpt"]
    assert json.loads(row["mining_config"])["false_negative"] == ["perc_pos", "margin"]
    negatives = [n for r in rows for n in r["negatives"]]
    assert negatives and len(negatives) == out["counts"]["negatives"]
    assert all(set(n) == {"id", "score", "modality", "rank"} for n in negatives)
    lin = m.lineage
    assert lin["checkpoint"] == env["ckpt"] and len(lin["spec_digest"]) == 16
    h = lin["histograms"]
    assert sum(h["kept"]) == out["counts"]["negatives"]
    assert sum(h["positive"]) == out["counts"]["triples"] - out["counts"]["positive_not_in_corpus"]
    assert out["counts"]["filtered.margin"] + out["counts"]["filtered.perc_pos"] == \
        out["counts"]["filtered_false_negatives"]
    assert out["search"]["image"]["index"] == "exact"


def test_bad_checkpoint_is_bad_input(env):
    with pytest.raises(BadInput):
        run_mine(env["synth"]["uri"], str(env["base"] / "t2"), "no-such-run", env["ckpts"])


def test_cache_on_gcs(gcs):
    """The cache keys rows by (id, digest) and lives on gs:// as well as locally."""
    calls = []

    def embed(items):
        calls.append(len(items))
        return np.stack([np.full(4, float(len(it["tokens"])), np.float32) for it in items])

    items = [{"id": f"t{i}", "modality": "text", "tokens": list(range(i + 1))} for i in range(5)]
    cache = EmbeddingCache("gs://loom-test/mine-cache", {"checkpoint": "r/step-1"}, 4)
    v1, c1 = cache.embed(items, embed)
    assert c1 == {"embedded": 5, "cache_hits": 0} and calls == [5]
    changed = items[:4] + [items[4] | {"tokens": [7]}]  # same id, other content
    v2, c2 = cache.embed(changed + [items[0]], embed)
    assert c2 == {"embedded": 1, "cache_hits": 5} and calls == [5, 1]
    np.testing.assert_array_equal(v2[:4], v1[:4])
    assert v2[4, 0] == 1.0 and v2[5, 0] == v1[0, 0]
    other = EmbeddingCache("gs://loom-test/mine-cache", {"checkpoint": "r/step-2"}, 4)
    assert other.dir != cache.dir and other.embed(items, embed)[1]["embedded"] == 5


def _split_corpus(examples_uri: str, out: str, rows_per_file: int) -> str:
    """The Examples version rewritten as many small files (same rows, same spec)."""
    d, m = mf.resolve_input(examples_uri)
    table = mf.read_table(d, m, "examples")
    writer = mf.VersionWriter(out, "ingest", f"split-{rows_per_file}")
    files = [writer.write_part("examples", f"part-{i // rows_per_file:05d}",
                               table.slice(i, rows_per_file))
             for i in range(0, len(table), rows_per_file)]
    storage.write_bytes(storage.join(writer.dir, SPEC_FILE),
                        storage.read_bytes(storage.join(d, SPEC_FILE)))
    writer.commit({"examples": files}, m.counts, m.config, m.lineage)
    return writer.dir


def test_driver_reads_no_examples(env, monkeypatch):
    """A corpus over many files gives the first run's triples, with the driver never
    reading an Examples row: workers read the files, and the cache answers every vector."""
    corpus = _split_corpus(str(env["base"] / "examples"), str(env["base"] / "split"), 3)
    assert len(mf.read_manifest(corpus).tables["examples"]) > 10
    read_table, read_parquet = mf.read_table, storage.read_parquet

    def no_examples_table(d, m, table, *a, **k):
        assert table != "examples", "the driver read the Examples table"
        return read_table(d, m, table, *a, **k)

    def no_examples_files(uris, *a, **k):
        assert not any(u.startswith(corpus) for u in uris), "the driver read an Examples file"
        return read_parquet(uris, *a, **k)

    monkeypatch.setattr(mf, "read_table", no_examples_table)  # this process only: not workers
    monkeypatch.setattr(storage, "read_parquet", no_examples_files)
    out = run_mine(env["synth"]["uri"], str(env["base"] / "triples"), env["ckpt"], env["ckpts"],
                   MiningConfig(negatives=2, cross_modal={"image": 1, "text": 1}),
                   corpus_uri=corpus)
    monkeypatch.undo()
    first = env["first"]
    assert out["version"] != first["version"] and not out["reused"]
    assert out["counts"]["embedded"] == 0  # same ids and inputs: the cache has every vector
    assert out["counts"]["cache_hits"] == env["second"]["counts"]["cache_hits"]
    skip = {"embedded", "cache_hits"}
    assert {k: v for k, v in out["counts"].items() if k not in skip} == \
        {k: v for k, v in first["counts"].items() if k not in skip}
    assert _triples(out) == _triples(first)
    assert out["histograms"] == first["histograms"] and out["modalities"] == first["modalities"]
    assert not storage.exists(storage.join(out["uri"], mf.WORK))  # vectors and plans cleaned


def test_mine_on_gcs(env, gcs):
    """Output and cache on gs://: workers write the cache parts and the vectors there and
    the searching worker fetches them; a second run with another config embeds nothing and
    triples the same pairs as the local run."""
    root = f"gs://{gcs.bucket}/mine-{uuid.uuid4().hex[:8]}"
    first = run_mine(env["synth"]["uri"], root, env["ckpt"], env["ckpts"],
                     MiningConfig(negatives=1))
    assert first["counts"]["embedded"] == env["first"]["counts"]["embedded"]
    gs_cache = first["cache"]  # the same key as the local cache, another root
    assert gs_cache == f"{root}/_embeddings/{env['first']['cache'].rsplit('/', 1)[1]}"
    assert storage.list_files(gs_cache, ".parquet")
    assert not storage.list_files(storage.join(first["uri"], mf.WORK))
    again = run_mine(env["synth"]["uri"], root, env["ckpt"], env["ckpts"],
                     MiningConfig(negatives=2, cross_modal={"image": 1, "text": 1}))
    assert again["counts"]["embedded"] == 0
    assert again["counts"]["cache_hits"] == env["second"]["counts"]["cache_hits"]
    assert len(_triples(again)) == len(_triples(env["first"]))
    assert [t["pair_id"] for t in _triples(again)] == [t["pair_id"] for t in _triples(env["first"])]


def test_query_slices_write_the_same_triples(env, monkeypatch):
    """The search split into query slices of 16 (parts of 8 triples: 20 parts, 10 search
    tasks), its queries prepared 5 Pairs at a time, writes byte for byte the parts one
    search task writes, and the same counts (positions and cache hits too), histograms and
    modality profiles; both are the first run's triples."""
    from loom.pipelines.ray import mine as steps

    mix = MiningConfig(negatives=2, cross_modal={"image": 1, "text": 1})
    out = {}
    for name, slice_rows, batch in (("sliced", 16, 5), ("whole", 1 << 20, 1 << 20)):
        monkeypatch.setattr(steps, "ROWS_PER_PART", 8)
        monkeypatch.setattr(steps, "SLICE_ROWS", slice_rows)
        monkeypatch.setattr(steps, "PAIR_BATCH", batch)
        out[name] = run_mine(env["synth"]["uri"], str(env["base"] / name), env["ckpt"],
                             env["ckpts"], mix, cache_root=str(env["base"] / "triples"))
    sliced, whole = out["sliced"], out["whole"]
    parts = {}
    for name, o in out.items():
        d, m = mf.resolve_input(o["uri"])
        parts[name] = {f.path: storage.read_bytes(storage.join(d, f.path))
                       for f in m.tables["triples"]}
    n = len(_triples(env["first"]))
    assert len(parts["sliced"]) == -(-n // 8) and n > 16 * 3  # several slices, several parts
    assert parts["sliced"] == parts["whole"]
    assert sliced["counts"] == whole["counts"] and sliced["counts"]["embedded"] == 0
    assert sliced["histograms"] == whole["histograms"] == env["first"]["histograms"]
    assert sliced["modalities"] == whole["modalities"] == env["first"]["modalities"]
    assert sliced["search"] == whole["search"] == env["first"]["search"]
    skip = {"embedded", "cache_hits"}
    assert {k: v for k, v in sliced["counts"].items() if k not in skip} == \
        {k: v for k, v in env["first"]["counts"].items() if k not in skip}
    assert _triples(sliced) == _triples(env["first"])
