"""Shard: train-split Pairs (pft) or triples (ft) -> fixed-size, shuffled Parquet shards.

Both passes are engine exchanges (`pipelines/exchange.py`), so no process holds the
corpus or the order. Pass 1 (`shard_join.py`) joins every Pair/Triple with the content of
the Examples it references, by example id, into joined TrainingRows under `_work`.
Pass 2 (`shard_pack.py`) is a deterministic global shuffle: a distributed sort on
`shuffle_key(seed, pair_id)` that writes each shard once. Shards hold exactly
`rows_per_shard` rows (the last one smaller), or as many as fit `target_mb` at the joined
rows' average compressed size.

Sampling weights (`weights`, keyed by a row's query kind, its positive's modality, or its
source: `natural` for kinds `natural:*` from `loom pairs`, else `synthetic`) repeat rows: a weight w gives floor(w) copies plus one more with probability frac(w),
decided by the seed, so a mix can be tilted towards a task or a modality.
"""

from __future__ import annotations

import json

from loom.pipelines.cluster import check_paths
from loom.pipelines.common import BadInput, cleanup_work, result, reuse, timed
from loom.pipelines.runner import Engine, file_items, run_exchange
from loom.pipelines.shard_join import join_exchange
from loom.pipelines.shard_pack import pack
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import PAIR, TRIPLE, Split
from loom.schemas.spec import SPEC_FILE, PreprocessingSpec


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
        ex_manifest = mf.read_manifest(examples_dir)
        mf.check_schema_version(examples_dir, ex_manifest)
        items = file_items(in_manifest.tables[table], in_dir, 256) + [
            {"name": f"examples-{n:05d}", "examples": uri}
            for n, uri in enumerate(ex_manifest.files(examples_dir, "examples"))]
        exchange = join_exchange(writer.dir, examples_dir,
                                 TRIPLE if table == "triples" else PAIR, split,
                                 ex_manifest.rows("examples"))
        joined, joined_rows, missing = [], 0, 0
        for _, value in run_exchange(engine, exchange, items):  # sorted by item name
            out = json.loads(value)
            missing += out["missing"]
            if out["file"]:
                joined.append(storage.join(work, out["file"]["path"]))
                joined_rows += out["file"]["rows"]
    with timed(timings, "pack_s"):
        if target_mb:
            size = sum(_file_size(u) for u in joined)
            rows_per_shard = max(1, int(target_mb * 1e6 / max(1.0, size / max(1, joined_rows))))
        spec_json = storage.read_bytes(storage.join(examples_dir, SPEC_FILE)).decode()
        files, n_rows = pack(engine, writer.dir, joined, joined_rows, rows_per_shard, seed,
                             weights,
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


def spec_of(manifest: mf.Manifest) -> PreprocessingSpec:
    return PreprocessingSpec.model_validate_json(storage.read_bytes(manifest.lineage["spec_uri"]))

