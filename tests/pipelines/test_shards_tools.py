"""Shards are plain Parquet: tools that know nothing of loom (polars, DuckDB) read them.

The shards dataset is built directly (examples + pairs versions written by hand, then
`run_shard`), not through the whole ingest/synth chain.
"""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest
from loom.pipelines.shard import run_shard
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import EXAMPLE, PAIR, empty_part, to_table
from loom.schemas.spec import SPEC_FILE, PreprocessingSpec
from loom.transforms.tokenizer import TextTokenizer, train_tokenizer

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


def _bigger_pairs(root: str, examples_dir: str, n: int) -> str:
    positives = ["text-0", "text-1", "image-0", "image-1"]
    rows = [{"pair_id": f"pair-{i:04d}", "task": "t", "kind": ["caption", "question"][i % 2],
             "query_text": f"{TEXTS[i % 2]} {i}", "query_modality": "text",
             "positive_id": positives[i % 4],
             "positive_modality": "image" if i % 4 >= 2 else "text", "split": "train",
             "prompt_version": "v1", "model": "offline", "backend": "offline",
             "generation_config": "{}", "seed": 0} for i in range(n)]
    writer = mf.VersionWriter(root, "synth", "synth-bigger")
    recs = [writer.write_part("pairs", f"part-{k:05d}", to_table(rows[k:k + 37], PAIR))
            for k in range(0, n, 37)]  # several input files -> several joined files
    writer.commit({"pairs": recs}, {"pairs": n}, {"heldout_fraction": 0.0},
                  {"examples": examples_dir})
    return writer.dir


@pytest.fixture(scope="module")
def bigger_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("bigger")
    _bigger_pairs(str(base / "pairs"), _examples(str(base / "examples")), 200)
    return str(base / "pairs")


def test_streaming_pack_is_the_global_shuffle(bigger_root, tmp_path):
    from loom.transforms.packing import shuffle_key

    out = run_shard(bigger_root, str(tmp_path / "s"), rows_per_shard=30, seed=3)
    files = _shard_files(out)
    sizes = [pl.read_parquet(f).height for f in files]
    assert sizes == [30] * 6 + [20]
    expected = sorted((f"pair-{i:04d}" for i in range(200)), key=lambda p: shuffle_key(3, p))
    assert _order(out) == expected  # one global order across every input file
    assert not storage.exists(storage.join(out["uri"], "_work"))  # buckets cleaned up


def test_sampling_weights_repeat_rows_deterministically(bigger_root, tmp_path):
    weights = {"image": 2.0, "question": 0.5}
    a = run_shard(bigger_root, str(tmp_path / "a"), rows_per_shard=64, weights=weights)
    b = run_shard(bigger_root, str(tmp_path / "b"), rows_per_shard=64, weights=weights)
    assert _order(a) == _order(b)
    df = pl.concat([pl.read_parquet(f) for f in _shard_files(a)])
    mod = df.select(pl.col("positive").struct.field("modality")).to_series().to_list()
    counts = {(k, m): 0 for k in ("caption", "question") for m in ("image", "text")}
    for k, m in zip(df["kind"].to_list(), mod, strict=True):
        counts[(k, m)] += 1
    # 50 pairs per (kind, modality) cell; weights multiply: caption/image x2,
    # question/image x1, caption/text x1, question/text x0.5 (about 25, by the seed)
    assert counts[("caption", "image")] == 100 and counts[("question", "image")] == 50
    assert counts[("caption", "text")] == 50 and 15 <= counts[("question", "text")] <= 35
    assert a["counts"]["rows"] == len(df)
    assert df["pair_id"].n_unique() < len(df)  # copies of a pair share its id


def test_target_mb_sizes_shards(bigger_root, tmp_path):
    out = run_shard(bigger_root, str(tmp_path / "mb"), target_mb=0.002)
    rps = out["counts"]["rows_per_shard"]
    assert 1 <= rps < 200 and out["counts"]["shards"] == -(-200 // rps)
    with pytest.raises(Exception, match="weights must be >= 0"):
        run_shard(bigger_root, str(tmp_path / "neg"), weights={"image": -1.0})


def test_shard_files_carry_their_spec(pairs_root, tmp_path):
    """An outside trainer reads the image size (and the whole spec) from each shard file."""
    import pyarrow.parquet as pq

    out = run_shard(pairs_root, str(tmp_path / "shards"), rows_per_shard=2)
    for f in _shard_files(out):
        meta = pq.read_schema(f).metadata
        spec = PreprocessingSpec.model_validate_json(meta[b"loom.preprocessing"])
        assert int(meta[b"loom.image_size"]) == spec.image_size
        assert spec.tokenizer_json  # the tokenizer that made the rows' token ids
        pixels = [r["positive"]["pixels"] for r in pq.read_table(f).to_pylist()
                  if r["positive"]["modality"] == "image"]
        assert all(len(p) == spec.image_size ** 2 * 3 for p in pixels)  # raw frames
