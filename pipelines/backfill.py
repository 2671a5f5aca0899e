"""Backfill: a raw prefix + a checkpoint -> an embeddings version (and optionally a FAISS index).

The checkpoint is resolved once, and its own PreprocessingSpec (tokenizer included) prepares
the inputs through ingest, so the encoder sees inputs made the way it was trained. Every
Example is embedded on Ray Data (an actor pool, one model per actor) in one job per run:
Ray Data tasks read the Examples Parquet files, so only file names and row numbers leave
the driver and only ids and vectors come back.

Resumable without duplicates: example ids, in the Examples version's file and row order, are
cut into chunks of CHUNK ids; chunk n is written as `embeddings/part-<n>.parquet` as soon as
its last vector arrives (a retry overwrites it) and the manifest is written last. A rerun
of a killed run keeps the parts it finished. Incremental: a previous
complete backfill under the same root with the same checkpoint and dim donates the vectors
of the ids it already has; only new ids are embedded.
"""

from __future__ import annotations

import hashlib
import io
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from loom.models.checkpoint import checkpoint_configs, resolve
from loom.models.handler import EncoderHandler
from loom.pipelines.cluster import check_paths
from loom.pipelines.common import BadInput, result, reuse, timed
from loom.pipelines.ingest import run_ingest
from loom.pipelines.runner import Engine, engine_kind
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import EMBEDDING
from loom.schemas.spec import SPEC_FILE, PreprocessingSpec
from tqdm import tqdm

STAGE = "backfill"
TABLE = "embeddings"
INGEST_DIR = "_ingest"
CHUNK = 1024  # ids per part file
INDEX_FILE = "index.faiss"
INDEX_IDS_FILE = "index_ids.json"


def run_backfill(input_uri: str, output_root: str, checkpoint: str, checkpoint_root: str,
                 dim: int | None = None, faiss_index: bool = False,
                 engine: Engine = Engine.BEAM) -> dict:
    check_paths(input=input_uri, output=output_root,
                checkpoint_root=checkpoint_root)  # multi-node: no local paths
    from loom.pipelines.ray.embed import embed_files_on_ray, embed_plan
    from loom.pipelines.ray.sizing import deadline_iter

    input_uri, output_root = storage.absolute(input_uri), storage.absolute(output_root)
    checkpoint_root = storage.absolute(checkpoint_root)
    try:
        ckpt_id = resolve(checkpoint_root, checkpoint)  # `latest` resolves once, here
    except FileNotFoundError as e:
        raise BadInput(str(e)) from e
    spec, enc = checkpoint_configs(checkpoint_root, ckpt_id)  # no weights in the driver
    dim = enc.out_dim if dim is None else dim
    if dim not in enc.embed_dims:
        raise BadInput(f"dim {dim} is not one of {ckpt_id}'s embed_dims {list(enc.embed_dims)}")
    if not spec.tokenizer_json:
        raise BadInput(f"checkpoint {ckpt_id} carries no tokenizer in its preprocessing spec")
    timings: dict[str, float] = {}

    with timed(timings, "ingest_s"):
        ingested = run_ingest(input_uri, storage.join(output_root, INGEST_DIR), spec=spec,
                              engine=engine)
    ex_dir, ex_manifest = mf.resolve_input(ingested["uri"])
    used = PreprocessingSpec.model_validate_json(storage.read_bytes(storage.join(ex_dir, SPEC_FILE)))
    if used != spec:
        raise RuntimeError(f"ingest {ex_dir} did not apply checkpoint {ckpt_id}'s spec/tokenizer")

    config = {"dim": dim, "faiss": faiss_index}
    version = mf.version_id(STAGE, [ex_manifest.version, ckpt_id], config)
    writer = mf.VersionWriter(output_root, STAGE, version)
    if (done := reuse(writer, STAGE)) is not None:
        return done

    ex_files = ex_manifest.files(ex_dir, "examples")
    ids, meta, where = _example_ids(ex_files)
    chunks = [ids[i : i + CHUNK] for i in range(0, len(ids), CHUNK)]

    prior = _prior_version(output_root, version, ckpt_id, dim)
    prior_table = (mf.read_table(*prior, TABLE, columns=["id", "vector"])
                   if prior is not None else EMBEDDING.empty_table().select(["id", "vector"]))
    prior_row = {i: n for n, i in enumerate(prior_table.column("id").to_pylist())}
    prior_vectors = _vectors(prior_table, dim)

    files: dict[int, mf.FileRecord] = {}  # chunk number -> its part
    index_parts: dict[int, np.ndarray] = {}  # chunk number -> its vectors
    counts = {"examples": len(ids), "embedded": 0, "copied": 0, "dim": dim, "resumed_chunks": 0}
    missing: dict[int, int] = {}  # chunk number -> how many of its vectors are still to come
    chunk_of: dict[str, int] = {}
    take: list[list[int]] = [[] for _ in ex_files]  # per Examples file, the rows to embed
    bar = tqdm(total=len(chunks), desc=f"backfill {version}", unit="chunk", disable=None,
               leave=False)
    fresh: dict[str, np.ndarray] = {}

    def write(n: int) -> None:
        chunk = chunks[n]
        table = _chunk_table(chunk, meta, fresh, prior_row, prior_vectors, ckpt_id, dim)
        files[n] = writer.write_part(TABLE, f"part-{n:05d}", table)
        if faiss_index:
            index_parts[n] = _vectors(table, dim)
        embedded = sum(1 for i in chunk if i in fresh)
        counts["embedded"] += embedded
        counts["copied"] += len(chunk) - embedded
        for i in chunk:
            fresh.pop(i, None)
        _tick(bar, counts)

    try:
        with timed(timings, "embed_s"):
            for n, chunk in enumerate(chunks):
                finished = _finished_part(writer, f"part-{n:05d}", chunk, ckpt_id, dim)
                if finished is not None:  # a killed run wrote this chunk already
                    record, table = finished
                    files[n] = record
                    if faiss_index:
                        index_parts[n] = _vectors(table, dim)
                    copied = sum(1 for i in chunk if i in prior_row)
                    counts["copied"] += copied
                    counts["embedded"] += len(chunk) - copied
                    counts["resumed_chunks"] += 1
                    _tick(bar, counts)
                    continue
                new = [i for i in chunk if i not in prior_row]
                if not new:
                    write(n)
                    continue
                missing[n] = len(new)
                for i in new:
                    chunk_of[i] = n
                    f, row = where[i]
                    take[f].append(row)
            work = list(zip(ex_files, take, strict=True))
            actors, cpus, gpus = embed_plan() if missing else (1, 1.0, 0.0)  # no Ray if none
            job_start = time.perf_counter()
            handler = EncoderHandler(checkpoint_root, ckpt_id, dim)
            for got_ids, got in deadline_iter(
                    "backfill embedding", cpus, gpus,
                    lambda: embed_files_on_ray(work, handler, actors=actors,
                                               cpus_per_actor=cpus, gpus_per_actor=gpus)):
                # the actor pool's start (process, imports, model load) is timed apart
                if "embed_startup_s" not in timings:  # and the rows that call embedded
                    timings["embed_startup_s"] = round(time.perf_counter() - job_start, 3)
                    timings["embed_startup_rows"] = len(got_ids)
                for i, vector in zip(got_ids, got, strict=True):
                    n = chunk_of[i]
                    if i in fresh or n in files:
                        raise RuntimeError(f"backfill embedded {i} twice")
                    fresh[i] = vector
                    missing[n] -= 1
                    if not missing[n]:
                        write(n)
    finally:
        bar.close()
    if len(files) != len(chunks):
        raise RuntimeError(f"backfill got no vectors for chunks "
                           f"{sorted(set(range(len(chunks))) - set(files))[:10]}")
    files = [files[n] for n in range(len(chunks))]
    if counts["embedded"] + counts["copied"] != len(ids) or sum(f.rows for f in files) != len(ids):
        raise RuntimeError(f"backfill lost or invented rows: {counts}")

    index_info = None
    if faiss_index:
        with timed(timings, "index_s"):
            index_info = _write_index(writer.dir, ids,
                                      [index_parts[n] for n in sorted(index_parts)], dim)
    extra = {"checkpoint": ckpt_id,
             "index": storage.join(writer.dir, INDEX_FILE) if faiss_index else None}
    lineage = {
        "input": input_uri,
        "examples": ex_dir,
        "examples_version": ex_manifest.version,
        "checkpoint": ckpt_id,
        "checkpoint_root": checkpoint_root,
        "spec_digest": spec.digest(),
        "engine": engine_kind(engine).value,
        "reused_from": prior[0] if prior else None,
        "faiss": index_info,
        "timings": timings,
        "extra": extra,
    }
    manifest = writer.commit({TABLE: files}, counts, config, lineage)
    return result(STAGE, manifest, writer.dir, False, timings=timings, **extra)


def _prior_version(root: str, version: str, ckpt_id: str,
                   dim: int) -> tuple[str, mf.Manifest] | None:
    """The newest complete backfill under root with the same checkpoint and dim."""
    return mf.newest_version(root, lambda m: (
        m.stage == STAGE and m.version != version and TABLE in m.tables
        and m.lineage.get("checkpoint") == ckpt_id and m.config.get("dim") == dim))


def _finished_part(writer: mf.VersionWriter, name: str, chunk: list[str], ckpt_id: str,
                   dim: int) -> tuple[mf.FileRecord, pa.Table] | None:
    """A part a killed run of this version completed (write_atomic: whole or absent)."""
    uri = writer.part_uri(TABLE, name)
    if not storage.exists(uri):
        return None
    body = storage.read_bytes(uri)
    try:
        table = pq.read_table(io.BytesIO(body))
    except Exception:
        return None
    if (table.column("id").to_pylist() != chunk
            or set(table.column("checkpoint").to_pylist()) != {ckpt_id}
            or set(table.column("dim").to_pylist()) != {dim}):
        return None
    record = mf.FileRecord(path=f"{TABLE}/{name}.parquet", rows=table.num_rows,
                           sha256=hashlib.sha256(body).hexdigest())
    return record, table


def _example_ids(ex_files: list[str]) -> tuple[list[str], dict[str, tuple],
                                                dict[str, tuple[int, int]]]:
    """Unique ids in file and row order (first occurrence wins), each id's (source URI,
    modality), and where it lives: (file number, row number). No pixels are read here."""
    meta: dict[str, tuple[str | None, str]] = {}
    where: dict[str, tuple[int, int]] = {}
    for f, uri in enumerate(ex_files):
        table = storage.read_parquet([uri], columns=["id", "modality", "source_uris"])
        for row, (i, modality, sources) in enumerate(zip(
                table.column("id").to_pylist(), table.column("modality").to_pylist(),
                table.column("source_uris").to_pylist(), strict=True)):
            if i not in where:
                meta[i] = ((sources or [None])[0], modality)
                where[i] = (f, row)
    return list(where), meta, where


def _chunk_table(chunk: list[str], meta: dict[str, tuple], fresh: dict[str, np.ndarray],
                 prior_row: dict[str, int], prior_vectors: np.ndarray, ckpt_id: str,
                 dim: int) -> pa.Table:
    vectors = np.stack([fresh[i] if i in fresh else prior_vectors[prior_row[i]]
                        for i in chunk]).astype(np.float32, copy=False)
    if vectors.shape != (len(chunk), dim):
        raise RuntimeError(f"embeddings of a chunk have shape {vectors.shape}, not "
                           f"({len(chunk)}, {dim})")
    offsets = pa.array(np.arange(0, (len(chunk) + 1) * dim, dim, dtype=np.int32))
    return pa.table({
        "id": pa.array(chunk, pa.string()),
        "source_uri": pa.array([meta[i][0] for i in chunk], pa.string()),
        "modality": pa.array([meta[i][1] for i in chunk], pa.string()),
        "checkpoint": pa.array([ckpt_id] * len(chunk), pa.string()),
        "dim": pa.array([dim] * len(chunk), pa.int32()),
        "vector": pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1))),
    }, schema=EMBEDDING)


def _vectors(table: pa.Table, dim: int) -> np.ndarray:
    values = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(-1, dim)


def _write_index(version_dir: str, ids: list[str], parts: list[np.ndarray], dim: int) -> dict:
    """An exact inner-product index over the unit vectors; row i of the index is ids[i]."""
    import faiss

    index = faiss.IndexFlatIP(dim)
    vecs = np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros((0, dim), np.float32))
    if len(vecs) != len(ids):
        raise RuntimeError(f"index has {len(vecs)} vectors for {len(ids)} ids")
    index.add(vecs)
    storage.write_atomic(storage.join(version_dir, INDEX_IDS_FILE), json.dumps(ids).encode())
    storage.write_atomic(storage.join(version_dir, INDEX_FILE),
                         faiss.serialize_index(index).tobytes())
    return {"index": INDEX_FILE, "ids": INDEX_IDS_FILE, "ntotal": int(index.ntotal),
            "metric": "inner_product"}


def _tick(bar: tqdm, counts: dict) -> None:
    bar.set_postfix({"embedded": counts["embedded"], "copied": counts["copied"]}, refresh=False)
    bar.update(1)
