"""Shard: train-split Pairs (pft) or triples (ft) -> fixed-size, shuffled Parquet shards.

Pass 1 (engine): join content into TrainingRows. Pass 2 (driver, streaming): a
deterministic global shuffle by `shuffle_key(seed, pair_id)` computed from the keys
alone, then every joined file is read once and its rows are scattered into per-shard
buckets, and each bucket is sorted into its shard. Memory holds one joined file or one
shard, never the whole version. Shards hold exactly `rows_per_shard` rows (the last one
smaller), or as many as fit `target_mb` at the joined rows' average compressed size.

Sampling weights (`weights`, keyed by a row's query kind, its positive's modality, or its
source: `natural` for kinds `natural:*` from `loom pairs`, else `synthetic`) repeat rows: a weight w gives floor(w) copies plus one more with probability frac(w),
decided by the seed, so a mix can be tilted towards a task or a modality.
"""

from __future__ import annotations

import math
from functools import partial
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from loom.pipelines.cluster import check_paths
from loom.pipelines.common import BadInput, cleanup_work, result, reuse, timed
from loom.pipelines.runner import Engine, StageTask, file_items, merge_results, run_stage
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import MISSING, PAIR, TRAINING_ROW, TRIPLE, Split
from loom.schemas.spec import SPEC_FILE, PreprocessingSpec
from loom.transforms.packing import shuffle_key, training_rows
from loom.transforms.stage import BaseStage
from loom.transforms.tokenizer import TextTokenizer


class ShardStage(BaseStage):
    name: ClassVar[str] = "shard"
    output_schemas: ClassVar[dict] = {"_rows": TRAINING_ROW, "_missing": MISSING}

    def __init__(self, examples_dir: str, input_table: str, split: Split = Split.TRAIN):
        self.examples_dir, self.split = examples_dir, split
        self.input_schema = TRIPLE if input_table == "triples" else PAIR
        self.examples: dict[str, dict] = {}

    def setup(self) -> None:
        manifest = mf.read_manifest(self.examples_dir)
        examples = mf.read_table(self.examples_dir, manifest, "examples")
        self.examples = {r["id"]: r for r in examples.to_pylist()}
        self.spec = PreprocessingSpec.model_validate_json(
            storage.read_bytes(storage.join(self.examples_dir, SPEC_FILE)))
        self.tokenizer = TextTokenizer.from_json(self.spec.tokenizer_json)

    def process_batch(self, batch: pa.RecordBatch) -> dict[str, pa.Table]:
        rows, missing = training_rows(batch, self.examples, self.tokenizer,
                                      self.spec.max_text_tokens, self.split)
        return {"_rows": rows, "_missing": pa.Table.from_pylist(missing, schema=MISSING)}


def repeats(weights: dict[str, float], seed: int, pair_id: str, kind: str | None,
            modality: str | None) -> int:
    """How many copies of a row the weights ask for (deterministic per seed and pair)."""
    source = "natural" if (kind or "").startswith("natural:") else "synthetic"
    w = weights.get(kind or "", 1.0) * weights.get(modality or "", 1.0) * weights.get(source, 1.0)
    whole = math.floor(w)
    frac = int(shuffle_key(seed, f"w:{pair_id}")[:8], 16) / 16**8
    return whole + (1 if frac < w - whole else 0)


def run_shard(input_uri: str, output_root: str, rows_per_shard: int = 512, seed: int = 0,
              engine: Engine = Engine.BEAM, target_mb: float | None = None,
              weights: dict[str, float] | None = None, split: Split = Split.TRAIN) -> dict:
    """`split`: train (what `loom train` trains on) or heldout (a validation slice for
    `loom train --val-shards`)."""
    check_paths(input=input_uri, output=output_root)  # multi-node: no local paths
    input_uri, output_root = storage.absolute(input_uri), storage.absolute(output_root)
    in_dir, in_manifest = mf.resolve_input(input_uri)
    table = "triples" if "triples" in in_manifest.tables else "pairs"
    if table not in in_manifest.tables:
        raise BadInput(f"{in_dir} holds neither pairs nor triples")
    examples_dir = in_manifest.lineage.get("examples")
    if not examples_dir:
        raise BadInput(f"{in_dir}'s lineage names no examples dataset")
    weights = dict(sorted((weights or {}).items()))
    if any(w < 0 for w in weights.values()):
        raise BadInput(f"sampling weights must be >= 0: {weights}")
    config = {"rows_per_shard": rows_per_shard, "seed": seed, "input_table": table,
              "target_mb": target_mb, "weights": weights}
    if split != Split.TRAIN:  # train shards keep the ids they had before splits were asked
        config["split"] = split.value
    version = mf.version_id("shard", [in_manifest.version], config)
    writer = mf.VersionWriter(output_root, "shard", version)
    if (done := reuse(writer, "shard")) is not None:
        return done
    timings: dict[str, float] = {}
    work = storage.join(writer.dir, "_work")
    with timed(timings, "join_s"):
        task = StageTask(partial(ShardStage, examples_dir, table, split), work)
        tables, _ = merge_results(
            run_stage(engine, task, file_items(in_manifest.tables[table], in_dir, 256)))
    with timed(timings, "pack_s"):
        joined = [storage.join(work, f.path) for f in tables.get("_rows", [])]
        missing = sum(f.rows for f in tables.get("_missing", []))
        if target_mb:
            n = sum(f.rows for f in tables.get("_rows", []))
            size = sum(_file_size(u) for u in joined)
            rows_per_shard = max(1, int(target_mb * 1e6 / max(1.0, size / max(1, n))))
        spec_json = storage.read_bytes(storage.join(examples_dir, SPEC_FILE)).decode()
        files, n_rows = _pack(writer, work, joined, rows_per_shard, seed, weights,
                              shard_metadata(PreprocessingSpec.model_validate_json(spec_json)))
    counts = {"rows": n_rows, "shards": len(files), "missing_content": missing,
              "input_rows": in_manifest.rows(table), "rows_per_shard": rows_per_shard}
    lineage = {
        "input": in_dir,
        "input_version": in_manifest.version,
        "examples": examples_dir,
        "spec_uri": storage.join(examples_dir, SPEC_FILE),
        "stage_hint": "ft" if table == "triples" else "pft",
        "split": split.value,
        "timings": timings,
    }
    manifest = writer.commit({"shards": files}, counts, config, lineage)
    cleanup_work(writer.dir)
    return result("shard", manifest, writer.dir, False, timings=timings)


def _file_size(uri: str) -> int:
    fs, path = storage.resolve(uri)
    return fs.get_file_info(path).size or 0


def shard_metadata(spec: PreprocessingSpec) -> dict[str, str]:
    """Parquet key-value metadata of every shard file: what a trainer outside loom needs to
    read the rows (pixels are frames of image_size x image_size; the spec in full, with
    the tokenizer that made the token ids and the mel settings of the features)."""
    return {"loom.image_size": str(spec.image_size), "loom.patch_size": str(spec.patch_size),
            "loom.pixel_codec": spec.image_codec, "loom.audio_n_mels": str(spec.audio_n_mels),
            "loom.preprocessing": spec.model_dump_json()}


def _pack(writer: mf.VersionWriter, work: str, joined: list[str], rows_per_shard: int,
          seed: int, weights: dict[str, float], metadata: dict[str, str] | None = None
          ) -> tuple[list, int]:
    """Global shuffle + fixed-size shards, streaming: see the module docstring."""
    # 1. The order, from keys alone: (shuffle key, file, row) for every copy of every row.
    order = []
    for f, uri in enumerate(joined):
        keys = storage.read_parquet([uri], columns=["pair_id", "kind", "positive"]).to_pydict()
        for r, (pid, kind, pos) in enumerate(zip(keys["pair_id"], keys["kind"], keys["positive"],
                                                strict=True)):
            copies = repeats(weights, seed, pid, kind, pos["modality"]) if weights else 1
            for c in range(copies):
                order.append((shuffle_key(seed, pid if c == 0 else f"{pid}#{c}"), f, r))
    order.sort()
    where: dict[int, list[tuple[int, int, int]]] = {}  # file -> [(row, shard, position)]
    for pos, (_, f, r) in enumerate(order):
        where.setdefault(f, []).append((r, pos // rows_per_shard, pos))
    # 2. Scatter: each joined file once, its rows into per-shard buckets.
    buckets = storage.join(work, "buckets")
    for f, uri in enumerate(joined):
        if f not in where:
            continue
        data = storage.read_parquet([uri], schema=TRAINING_ROW)
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for r, shard, pos in where[f]:
            by_shard.setdefault(shard, []).append((r, pos))
        for shard, picks in by_shard.items():
            part = data.take([r for r, _ in picks]).append_column(
                "_pos", pa.array([p for _, p in picks], pa.int64()))
            storage.write_parquet(part, storage.join(buckets, f"{shard:05d}", f"{f:05d}.parquet"))
        del data
    # 3. Gather: each bucket sorted by position is one shard.
    files = []
    for shard in range((len(order) + rows_per_shard - 1) // rows_per_shard):
        parts = [e.uri for e in storage.list_files(storage.join(buckets, f"{shard:05d}"),
                                                   ".parquet")]
        rows = storage.read_parquet(sorted(parts))
        rows = rows.take(pc.sort_indices(rows.column("_pos"))).drop_columns(["_pos"])
        files.append(writer.write_part("shards", f"shard-{shard:05d}", rows, metadata))
    return files, len(order)


def spec_of(manifest: mf.Manifest) -> PreprocessingSpec:
    return PreprocessingSpec.model_validate_json(storage.read_bytes(manifest.lineage["spec_uri"]))

