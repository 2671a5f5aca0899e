"""Shard: train-split Pairs (pft) or triples (ft) -> fixed-size, shuffled Parquet shards.

Pass 1 (engine): join content into TrainingRows. Pass 2 (driver): a deterministic global
shuffle by `shuffle_key(seed, pair_id)` and packing into shards of exactly
`rows_per_shard` rows (the last one smaller). Pass 2 holds one version's rows in memory;
a streaming pack is the trainer issue's work.
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.common import BadInput, cleanup_work, result, reuse, timed
from pipelines.runner import Engine, StageTask, file_items, merge_results, run_stage
from schemas import manifest as mf
from schemas import storage
from schemas.records import PAIR, TRAINING_ROW, TRIPLE
from schemas.spec import SPEC_FILE, PreprocessingSpec
from transforms.items import example_to_item
from transforms.packing import shuffle_key, training_rows
from transforms.stage import BaseStage
from transforms.tokenizer import TextTokenizer

MISSING = pa.schema([("pair_id", pa.string()), ("missing", pa.string())])


class ShardStage(BaseStage):
    name: ClassVar[str] = "shard"
    output_schemas: ClassVar[dict] = {"_rows": TRAINING_ROW, "_missing": MISSING}

    def __init__(self, examples_dir: str, input_table: str):
        self.examples_dir = examples_dir
        self.input_schema = TRIPLE if input_table == "triples" else PAIR
        self.items: dict[str, dict] = {}

    def setup(self) -> None:
        manifest = mf.read_manifest(self.examples_dir)
        examples = mf.read_table(self.examples_dir, manifest, "examples")
        self.items = {r["id"]: example_to_item(r) for r in examples.to_pylist()}
        self.spec = PreprocessingSpec.model_validate_json(
            storage.read_bytes(storage.join(self.examples_dir, SPEC_FILE)))
        self.tokenizer = TextTokenizer.from_json(self.spec.tokenizer_json)

    def process_batch(self, batch: pa.RecordBatch) -> dict[str, pa.Table]:
        rows, missing = training_rows(batch, self.items, self.tokenizer, self.spec.max_text_tokens)
        return {"_rows": rows, "_missing": pa.Table.from_pylist(missing, schema=MISSING)}


def run_shard(input_uri: str, output_root: str, rows_per_shard: int = 512, seed: int = 0,
              engine: Engine = Engine.BEAM) -> dict:
    input_uri, output_root = storage.absolute(input_uri), storage.absolute(output_root)
    in_dir, in_manifest = mf.resolve_input(input_uri)
    table = "triples" if "triples" in in_manifest.tables else "pairs"
    if table not in in_manifest.tables:
        raise BadInput(f"{in_dir} holds neither pairs nor triples")
    examples_dir = in_manifest.lineage.get("examples")
    if not examples_dir:
        raise BadInput(f"{in_dir}'s lineage names no examples dataset")
    config = {"rows_per_shard": rows_per_shard, "seed": seed, "input_table": table}
    version = mf.version_id("shard", [in_manifest.version], config)
    writer = mf.VersionWriter(output_root, "shard", version)
    if (done := reuse(writer, "shard")) is not None:
        return done
    timings: dict[str, float] = {}
    work = storage.join(writer.dir, "_work")
    with timed(timings, "join_s"):
        task = StageTask(partial(ShardStage, examples_dir, table), work)
        tables, _ = merge_results(
            run_stage(engine, task, file_items(in_manifest.tables[table], in_dir, 256)))
    with timed(timings, "pack_s"):
        rows = storage.read_parquet([storage.join(work, f.path) for f in tables.get("_rows", [])],
                                    schema=TRAINING_ROW)
        missing = sum(f.rows for f in tables.get("_missing", []))
        keys = pa.array([shuffle_key(seed, p) for p in rows.column("pair_id").to_pylist()])
        rows = rows.take(pc.sort_indices(keys))
        files = []
        for i, start in enumerate(range(0, rows.num_rows, rows_per_shard)):
            files.append(writer.write_part("shards", f"shard-{i:05d}",
                                           rows.slice(start, rows_per_shard)))
    counts = {"rows": rows.num_rows, "shards": len(files), "missing_content": missing,
              "input_rows": in_manifest.rows(table)}
    lineage = {
        "input": in_dir,
        "input_version": in_manifest.version,
        "examples": examples_dir,
        "spec_uri": storage.join(examples_dir, SPEC_FILE),
        "stage_hint": "ft" if table == "triples" else "pft",
        "timings": timings,
    }
    manifest = writer.commit({"shards": files}, counts, config, lineage)
    cleanup_work(writer.dir)
    return result("shard", manifest, writer.dir, False, timings=timings)


def spec_of(manifest: mf.Manifest) -> PreprocessingSpec:
    return PreprocessingSpec.model_validate_json(storage.read_bytes(manifest.lineage["spec_uri"]))

