"""Backfill: a raw prefix + a checkpoint -> one unit embedding per Example, incrementally."""

from __future__ import annotations

import json
import random
import shutil

import faiss
import numpy as np
import pyarrow as pa
import pytest
from loom.jobs.corpus import generate_corpus
from loom.models.checkpoint import load_checkpoint
from loom.models.collate import collate_items
from loom.pipelines.backfill import run_backfill
from loom.pipelines.common import BadInput
from loom.pipelines.ingest import run_ingest
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.transforms.items import example_to_item
from loom.transforms.scenes import random_scene, render_image

from tests.checkpoints import examples_spec, tiny_checkpoint


def _rows(out: dict) -> list[dict]:
    vdir, manifest = mf.resolve_input(out["uri"])
    return mf.read_table(vdir, manifest, "embeddings").to_pylist()


def _examples(out: dict) -> list[dict]:
    _, manifest = mf.resolve_input(out["uri"])
    return mf.read_table(*mf.resolve_input(manifest.lineage["examples"]), "examples").to_pylist()


@pytest.fixture(scope="module")
def env(tmp_path_factory, ray_session):
    base = tmp_path_factory.mktemp("backfill")
    generate_corpus(str(base / "c"), 12, 12, seed=5)
    media, ckpts, out = str(base / "c" / "media"), str(base / "ckpt"), str(base / "out")
    prep = run_ingest(media, str(base / "prep"))  # trains the tokenizer the checkpoints carry
    spec = examples_spec(prep["uri"])
    a, b = tiny_checkpoint(ckpts, "run-a", spec, 0), tiny_checkpoint(ckpts, "run-b", spec, 1)
    first = run_backfill(media, out, "run-a", ckpts)
    return {"base": base, "media": media, "ckpts": ckpts, "out": out, "a": a, "b": b,
            "first": first, "accepted": prep["counts"]["examples"]}


def test_every_example_embedded_once(env):
    first = env["first"]
    rows, examples = _rows(first), _examples(first)
    ids = [r["id"] for r in rows]
    assert first["stage"] == "backfill" and first["checkpoint"] == env["a"]
    assert not first["reused"] and first["version"].startswith("backfill-")
    assert len(ids) == len(set(ids)) == len(examples) == env["accepted"] >= 24
    assert set(ids) == {e["id"] for e in examples}
    assert {e["modality"] for e in examples} >= {"image", "text"}
    c = first["counts"]
    assert (c["examples"], c["embedded"], c["copied"], c["dim"]) == (len(ids), len(ids), 0, 32)
    vecs = np.array([r["vector"] for r in rows], dtype=np.float32)
    assert vecs.shape == (len(ids), 32)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    by_id = {e["id"]: e for e in examples}
    for r in rows:
        assert r["checkpoint"] == env["a"] and r["dim"] == 32
        assert r["source_uri"] == by_id[r["id"]]["source_uris"][0]
        assert r["modality"] == by_id[r["id"]]["modality"]
    np.testing.assert_allclose(vecs, _reference(env, [by_id[i] for i in ids], 32), atol=1e-5)

    again = run_backfill(env["media"], env["out"], "run-a", env["ckpts"])
    assert again["reused"] and again["version"] == first["version"]
    assert again["checkpoint"] == env["a"] and again["counts"] == first["counts"]


def _reference(env, examples: list[dict], dim: int) -> np.ndarray:
    """The checkpoint's model run on one item at a time (no batching, grouping or the
    embed helper the pipeline uses), its first `dim` outputs L2-normalized in numpy."""
    import torch

    model = load_checkpoint(env["ckpts"], env["a"]).model.eval()
    out = []
    with torch.no_grad():
        for e in examples:
            full = model(**collate_items([example_to_item(e)], model.cfg))[0].numpy()
            out.append(full[:dim] / np.linalg.norm(full[:dim]))
    return np.stack(out).astype(np.float32)


def test_added_files_embed_alone(env, tmp_path):
    media, out = str(tmp_path / "media"), str(tmp_path / "out")
    shutil.copytree(env["media"], media)
    shutil.copytree(env["out"], out)
    rng = random.Random(11)
    for k in range(3):
        (tmp_path / "media" / "images" / f"new-{k}.png").write_bytes(
            render_image(random_scene(rng), rng, side=64))
    second = run_backfill(media, out, env["a"], env["ckpts"])
    first = env["first"]["counts"]
    assert not second["reused"] and second["version"] != env["first"]["version"]
    c = second["counts"]
    assert (c["embedded"], c["copied"], c["examples"]) == (3, first["examples"],
                                                           first["examples"] + 3)
    old = {r["id"]: r["vector"] for r in _rows(env["first"])}
    rows = _rows(second)
    assert len({r["id"] for r in rows}) == len(rows) == c["examples"]
    assert all(r["vector"] == old[r["id"]] for r in rows if r["id"] in old)
    assert run_backfill(media, out, env["a"], env["ckpts"])["reused"]


def test_other_checkpoint_reembeds_everything(env):
    other = run_backfill(env["media"], env["out"], "run-b", env["ckpts"])
    n = env["first"]["counts"]["examples"]
    assert other["checkpoint"] == env["b"] and other["version"] != env["first"]["version"]
    assert (other["counts"]["embedded"], other["counts"]["copied"]) == (n, 0)
    assert {r["checkpoint"] for r in _rows(other)} == {env["b"]}


def test_matryoshka_dim_and_faiss_index(env):
    with pytest.raises(BadInput):
        run_backfill(env["media"], env["out"], "run-a", env["ckpts"], dim=7)
    small = run_backfill(env["media"], env["out"], "run-a", env["ckpts"], dim=16,
                         faiss_index=True)
    rows = _rows(small)
    vecs = np.array([r["vector"] for r in rows], dtype=np.float32)
    assert vecs.shape == (env["first"]["counts"]["examples"], 16)
    assert small["counts"]["dim"] == 16 and small["counts"]["copied"] == 0
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    vdir, manifest = mf.resolve_input(small["uri"])
    info = manifest.lineage["faiss"]
    assert small["index"] == storage.join(vdir, info["index"])
    index = faiss.deserialize_index(
        np.frombuffer(storage.read_bytes(storage.join(vdir, info["index"])), dtype=np.uint8))
    index_ids = json.loads(storage.read_bytes(storage.join(vdir, info["ids"])))
    assert index.ntotal == info["ntotal"] == len(rows) == len(index_ids)
    _, top = index.search(vecs, 1)
    assert [index_ids[t] for t in top[:, 0]] == [r["id"] for r in rows]


def test_killed_run_resumes_its_parts(env, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(env["out"], out)
    vdir = storage.join(out, env["first"]["version"])
    storage.delete(storage.join(vdir, mf.MANIFEST))  # killed after its parts, before commit
    again = run_backfill(env["media"], out, "run-a", env["ckpts"])
    assert not again["reused"] and again["version"] == env["first"]["version"]
    assert again["counts"]["resumed_chunks"] == 1
    assert again["counts"]["embedded"] == env["first"]["counts"]["embedded"]
    assert _rows(again) == _rows(env["first"])


def test_many_chunks_and_calls_resume_only_what_is_missing(env, tmp_path, monkeypatch):
    """Chunks of 5 ids, actor calls of ~7 rows: vectors arrive per call and each chunk is
    written when its last vector arrives; a rerun after losing two parts embeds only those."""
    import loom.pipelines.backfill as backfill
    import loom.pipelines.ray.embed as ray_embed

    monkeypatch.setattr(backfill, "CHUNK", 5)
    monkeypatch.setattr(ray_embed, "ROWS_PER_CALL", 7)
    out = str(tmp_path / "out")
    small = run_backfill(env["media"], out, "run-a", env["ckpts"])
    n = env["accepted"]
    assert small["counts"]["embedded"] == n and small["counts"]["resumed_chunks"] == 0
    rows, first = _rows(small), _rows(env["first"])
    assert [r["id"] for r in rows] == [r["id"] for r in first]  # same order, other chunking
    assert np.allclose([r["vector"] for r in rows], [r["vector"] for r in first], atol=1e-5)
    _, manifest = mf.resolve_input(small["uri"])
    parts = sorted(f.path for f in manifest.tables["embeddings"])
    assert len(parts) == -(-n // 5)

    vdir = storage.join(out, small["version"])
    storage.delete(storage.join(vdir, mf.MANIFEST))
    for lost in (parts[1], parts[3]):
        storage.delete(storage.join(vdir, lost))
    again = run_backfill(env["media"], out, "run-a", env["ckpts"])
    assert again["counts"]["resumed_chunks"] == len(parts) - 2
    assert again["counts"]["embedded"] == n
    assert np.allclose([r["vector"] for r in _rows(again)], [r["vector"] for r in rows],
                       atol=1e-5)
    assert [r["id"] for r in _rows(again)] == [r["id"] for r in rows]


def _example_files(tmp_path, id_lists: list[list[str]]) -> list[str]:
    uris = []
    for f, ids in enumerate(id_lists):
        uri = str(tmp_path / f"examples-{f}.parquet")
        storage.write_parquet(pa.table({
            "id": ids, "modality": ["text"] * len(ids),
            "source_uris": [[f"gs://b/{f}/{i}"] for i in ids]}), uri)
        uris.append(uri)
    return uris


def test_bookkeeping_dedups_in_file_order_and_reads_chunks_back(tmp_path, monkeypatch):
    """First occurrence wins across files; a chunk's ids, sources and modalities come back
    from the files in file and row order; an unknown id is an error, not a wrong chunk."""
    import loom.pipelines.backfill as backfill

    monkeypatch.setattr(backfill, "CHUNK", 3)
    files = _example_files(tmp_path, [["a", "b", "c"], ["b", "d"], [], ["e", "a", "f"]])
    book = backfill._Book(files)
    chunks = [book.chunk_meta(n) for n in range(-(-book.n // 3))]
    assert [i for ids, _, _ in chunks for i in ids] == ["a", "b", "c", "d", "e", "f"]
    assert chunks[1][1] == ["gs://b/1/d", "gs://b/3/e", "gs://b/3/f"]
    assert list(book.position(["f", "a", "d"])) == [5, 0, 3]
    assert book.work(np.array([False, True, False, True, True, False])) == [
        (files[0], [1, 2]), (files[1], [1, 2]), (files[2], []), (files[3], [0, 1])]
    # row spans [start, stop, ...]: a run of rows is two numbers, a skipped repeat ("a" in
    # the last file) splits a run, a file's end ends one
    assert book.work(np.ones(6, dtype=bool)) == [
        (files[0], [0, 3]), (files[1], [1, 2]), (files[2], []), (files[3], [0, 1, 2, 3])]
    assert book.work(np.array([True, True, False, True, True, True])) == [
        (files[0], [0, 2]), (files[1], [1, 2]), (files[2], []), (files[3], [0, 1, 2, 3])]
    assert book.work(np.zeros(6, dtype=bool)) == [(f, []) for f in files]
    with pytest.raises(RuntimeError, match="not an Example"):
        book.position(["zz"])


def test_bookkeeping_refuses_two_ids_on_one_key(tmp_path, monkeypatch):
    import loom.pipelines.backfill as backfill

    monkeypatch.setattr(backfill, "_keys", lambda ids: np.array(
        [len(i) for i in ids], dtype=np.uint64))  # "ab" and "cd" collide
    with pytest.raises(RuntimeError, match="share a 64-bit key"):
        backfill._Book(_example_files(tmp_path, [["ab", "x"], ["cd"]]))
    backfill._Book(_example_files(tmp_path, [["ab", "x"], ["ab"]]))  # a true repeat is fine


def test_bookkeeping_keeps_bytes_not_objects_per_id(tmp_path):
    """The driver's per-id state is numpy columns: what stays allocated after the book is
    built is tens of bytes per id (the dicts it replaced held ~300)."""
    import tracemalloc

    import loom.pipelines.backfill as backfill

    n = 40_000
    files = _example_files(tmp_path, [[f"{k:064x}" for k in range(s, s + 4000)]
                                      for s in range(0, n, 4000)])
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    book = backfill._Book(files)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert book.n == n
    assert held / n < 32, f"{held / n:.0f} bytes held per id"
