"""Shard packing as a distributed sort: the shards are the global order, on both engines,
with no intermediate files and no rows in the driver.

Triples (negatives and a query_ref to join) in many small files, sharded with weights on
Beam and on Ray; the expected shards are computed here from the input alone: every copy
of every row sorted by its shuffle key, cut every `rows_per_shard`.
"""

from __future__ import annotations

import polars as pl
import pyarrow.parquet as pq
import pytest
from loom.pipelines import shard as shard_mod
from loom.pipelines.runner import Engine
from loom.pipelines.shard import run_shard
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import TRIPLE, to_table
from loom.transforms.packing import repeats, shuffle_key

from tests.pipelines.test_shards_tools import _examples

IDS = ["text-0", "text-1", "image-0", "image-1"]
WEIGHTS = {"image": 2.0, "question": 0.5, "text": 1.5}
SEED, RPS = 5, 9


def _triples(root: str, examples_dir: str, n: int, per_file: int) -> tuple[str, list[dict]]:
    rows = []
    for i in range(n):
        pos = IDS[i % 4]
        negs = [x for x in IDS if x != pos][: 1 + i % 3]
        if i == 7:
            negs = negs + ["not-in-the-corpus"]  # reported missing, never packed
        rows.append({
            "pair_id": f"t-{i:04d}", "kind": ["caption", "question"][i % 2],
            "query_text": f"query {i}", "query_modality": "image" if i % 5 == 0 else "text",
            "query_ref": {"example_id": "image-1", "parts": None} if i % 5 == 0 else None,
            "positive_id": pos, "positive_modality": pos.split("-")[0],
            "negatives": [{"id": x, "score": 0.5, "modality": x.split("-")[0], "rank": r}
                          for r, x in enumerate(negs)],
            "checkpoint": "ck", "task": "find it", "split": "train"})
    writer = mf.VersionWriter(root, "mine", "mine-handmade")
    recs = [writer.write_part("triples", f"part-{k // per_file:05d}",
                              to_table(rows[k:k + per_file], TRIPLE))
            for k in range(0, n, per_file)]
    writer.commit({"triples": recs}, {"triples": n}, {}, {"examples": examples_dir})
    return writer.dir, rows


@pytest.fixture(scope="module")
def triples(tmp_path_factory):
    base = tmp_path_factory.mktemp("triples")
    return _triples(str(base / "triples"), _examples(str(base / "examples")), 150, 11)


def _expected(rows: list[dict]) -> list[list[tuple]]:
    """The shards from the input alone: row copies sorted by shuffle key, chunked."""
    order = []
    for r in rows:
        if any(n["id"] not in IDS for n in r["negatives"]):
            continue
        for c in range(repeats(WEIGHTS, SEED, r["pair_id"], r["kind"], r["positive_modality"])):
            row = (r["pair_id"], r["positive_id"], tuple(n["id"] for n in r["negatives"]),
                   r["query_modality"])
            order.append((shuffle_key(SEED, r["pair_id"] if c == 0 else f"{r['pair_id']}#{c}"),
                          row))
    order = [row for _, row in sorted(order)]
    return [order[i:i + RPS] for i in range(0, len(order), RPS)]


def _shards(out: dict) -> list[list[tuple]]:
    got = []
    for f in mf.read_manifest(out["uri"]).files(out["uri"], "shards"):
        df = pl.read_parquet(f)
        got.append([(r["pair_id"], r["positive"]["id"],
                     tuple(n["id"] for n in r["negatives"]), r["query"]["modality"])
                    for r in df.iter_rows(named=True)])
    return got


def test_both_engines_pack_the_global_sort(triples, tmp_path, monkeypatch, ray_session):
    """Same shards as the independent sort, on each engine, byte for byte the same files.

    On Ray every step runs in worker processes: the driver opens no Parquet file (no
    pairs, Examples, joined rows or keys), it only sums counters and records files."""
    root, rows = triples
    expected = _expected(rows)
    assert len(expected) > 10 and len(expected[-1]) < RPS  # many shards, a short last one
    outs = {Engine.BEAM: run_shard(root, str(tmp_path / "beam"), rows_per_shard=RPS,
                                   seed=SEED, engine=Engine.BEAM, weights=WEIGHTS)}
    reads: list[str] = []
    real = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda path, *a, **k: reads.append(str(path))
                        or real(path, *a, **k))
    outs[Engine.RAY] = run_shard(root, str(tmp_path / "ray"), rows_per_shard=RPS, seed=SEED,
                                 engine=Engine.RAY, weights=WEIGHTS)
    monkeypatch.undo()
    assert reads == []  # the Ray driver read no rows
    for out in outs.values():
        assert _shards(out) == expected
        assert out["counts"]["missing_content"] == 1
        assert out["counts"]["rows"] == sum(map(len, expected))
    beam, ray = (mf.read_manifest(o["uri"]) for o in outs.values())
    assert beam.version == ray.version
    assert beam.tables["shards"] == ray.tables["shards"]  # paths, rows and sha256
    assert [f.path for f in beam.tables["shards"]] == [
        f"shards/shard-{i:05d}.parquet" for i in range(len(expected))]
    first = beam.files(outs[Engine.BEAM]["uri"], "shards")[0]
    assert b"loom.preprocessing" in pq.read_schema(first).metadata


def test_packing_leaves_only_joined_rows_and_shards(triples, tmp_path, monkeypatch):
    """Before `_work` is cleaned, the version holds the joined parts (one per input item),
    the shards and the manifest: no per-(file, shard) buckets or any other file."""
    root, _ = triples
    seen: list[str] = []
    clean = shard_mod.cleanup_work

    def listing_cleanup(version_dir: str) -> None:
        seen.extend(e.uri[len(version_dir) + 1:] for e in storage.list_files(version_dir))
        clean(version_dir)

    monkeypatch.setattr(shard_mod, "cleanup_work", listing_cleanup)
    out = run_shard(root, str(tmp_path / "s"), rows_per_shard=RPS, seed=SEED, weights=WEIGHTS)
    shards = [f.path for f in mf.read_manifest(out["uri"]).tables["shards"]]
    joined = [p for p in seen if p.startswith("_work/_rows/")]
    assert len(joined) == 14  # 150 triples in files of 11
    assert sorted(seen) == sorted(joined + shards + ["manifest.json"])
    assert not storage.exists(storage.join(out["uri"], "_work"))
