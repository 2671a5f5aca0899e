"""Shards are plain Parquet: tools that know nothing of loom (polars, DuckDB) read them.

The shards dataset is built directly (examples + pairs versions written by hand, then
`run_shard`), not through the whole ingest/synth chain.
"""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest

from pipelines.shard import run_shard
from schemas import manifest as mf
from schemas import storage
from schemas.records import EXAMPLE, PAIR, empty_part, to_table
from schemas.spec import SPEC_FILE, PreprocessingSpec
from transforms.tokenizer import TextTokenizer, train_tokenizer

TEXTS = ["a red bicycle leans on a wall", "the blue lake under the mountain"]
N_PAIRS = 6


def _examples(root: str) -> str:
    tokenizer_json = train_tokenizer(TEXTS + ["a photo of a red square"], vocab_size=64)
    spec = PreprocessingSpec(image_size=8, patch_size=4, vocab_size=64,
                             tokenizer_json=tokenizer_json)
    tok = TextTokenizer.from_json(tokenizer_json)
    rng = np.random.default_rng(0)
    rows = []
    for i, text in enumerate(TEXTS):
        part = empty_part("text") | {"text": text, "tokens": tok.encode(text, 64)}
        rows.append({"id": f"text-{i}", "modality": "text", "parts": [part],
                     "source_uris": [f"/corpus/t{i}.txt"], "mime": "text/plain",
                     "size_bytes": len(text), "metadata": "{}"})
    for i in range(2):
        pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8).tobytes()
        part = empty_part("image") | {"pixels": pixels, "height": 8, "width": 8, "frames": 1}
        rows.append({"id": f"image-{i}", "modality": "image", "parts": [part],
                     "source_uris": [f"/corpus/i{i}.png"], "mime": "image/png",
                     "size_bytes": len(pixels), "metadata": "{}"})
    writer = mf.VersionWriter(root, "ingest", "ingest-handmade")
    rec = writer.write_part("examples", "part-00000", to_table(rows, EXAMPLE))
    storage.write_atomic(storage.join(writer.dir, SPEC_FILE), spec.model_dump_json().encode())
    writer.commit({"examples": [rec]}, {"examples": len(rows)}, {}, {})
    return writer.dir


def _pairs(root: str, examples_dir: str) -> str:
    positives = ["text-0", "text-1", "image-0", "image-1"]
    rows = [{"pair_id": f"pair-{i}", "task": "find it", "kind": "caption",
             "query_text": f"{TEXTS[i % 2]} number {i}",
             "query_modality": "text", "positive_id": positives[i % 4],
             "positive_modality": "image" if positives[i % 4].startswith("image") else "text",
             "split": "train", "prompt_version": "v1", "model": "offline",
             "backend": "offline", "generation_config": "{}", "seed": 0}
            for i in range(N_PAIRS)]
    writer = mf.VersionWriter(root, "synth", "synth-handmade")
    rec = writer.write_part("pairs", "part-00000", to_table(rows, PAIR))
    writer.commit({"pairs": [rec]}, {"pairs": len(rows)}, {"heldout_fraction": 0.0},
                  {"examples": examples_dir})
    return writer.dir


@pytest.fixture(scope="module")
def pairs_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("handmade")
    examples_dir = _examples(str(base / "examples"))
    _pairs(str(base / "pairs"), examples_dir)
    return str(base / "pairs")


def _shard_files(out: dict) -> list[str]:
    manifest = mf.read_manifest(out["uri"])
    return manifest.files(out["uri"], "shards")


def test_shards_are_plain_parquet(pairs_root, tmp_path):
    out = run_shard(pairs_root, str(tmp_path / "shards"), rows_per_shard=2)
    assert out["counts"]["rows"] == N_PAIRS and out["counts"]["shards"] == 3
    files = _shard_files(out)
    assert len(files) == 3

    frames = [pl.read_parquet(f) for f in files]
    assert [f.height for f in frames] == [2, 2, 2]
    df = pl.concat(frames)
    assert {"pair_id", "query", "positive", "negatives"} <= set(df.columns)
    tokens = df.select(pl.col("query").struct.field("tokens")).to_series().to_list()
    assert all(len(t) > 0 and all(isinstance(x, int) for x in t) for t in tokens)
    pos = df.select(pl.col("positive").struct.field("id")).to_series().to_list()
    assert sorted(pos) == sorted(["text-0", "text-1", "image-0", "image-1", "text-0", "text-1"])
    image_pixels = df.filter(pl.col("positive").struct.field("modality") == "image") \
        .select(pl.col("positive").struct.field("pixels")).to_series().to_list()
    assert len(image_pixels) == 2 and all(len(p) == 8 * 8 * 3 for p in image_pixels)

    listing = ", ".join(f"'{f}'" for f in files)
    count, ids, n_tokens, n_negs = duckdb.sql(
        f"select count(*), count(distinct positive.id), sum(len(query.tokens)), "
        f"sum(len(negatives)) from read_parquet([{listing}])").fetchall()[0]
    assert (count, ids, n_negs) == (N_PAIRS, 4, 0)
    assert n_tokens == sum(len(t) for t in tokens)
    per_file = duckdb.sql(
        f"select filename, count(*) from read_parquet([{listing}], filename=true) "
        f"group by filename order by filename").fetchall()
    assert [n for _, n in per_file] == [2, 2, 2]
    glob = storage.join(out["uri"], "shards", "*.parquet")
    by_modality = dict(duckdb.sql(
        f"select positive.modality, count(*) from read_parquet('{glob}') group by 1").fetchall())
    assert by_modality == {"text": 4, "image": 2}


def _order(out: dict) -> list[str]:
    return pl.concat([pl.read_parquet(f) for f in _shard_files(out)])["pair_id"].to_list()


def test_shuffle_is_deterministic_per_seed(pairs_root, tmp_path):
    first = run_shard(pairs_root, str(tmp_path / "a"), rows_per_shard=2, seed=7)
    same = run_shard(pairs_root, str(tmp_path / "b"), rows_per_shard=2, seed=7)
    other = run_shard(pairs_root, str(tmp_path / "c"), rows_per_shard=2, seed=8)
    assert same["reused"] is False and first["version"] == same["version"]
    assert _order(first) == _order(same)
    assert sorted(_order(other)) == sorted(_order(first))
    assert _order(other) != _order(first)
