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

Bookkeeping at scale: the driver keeps a 64-bit key, a file and a row per id in numpy
arrays (about 40 bytes per id), reads ids, sources and modalities back per chunk from the
Examples files when it writes that chunk's part, finds a previous version's vectors from its
id columns and reads them per chunk, and leaves the FAISS index to a Ray task that reads
the parts from storage: no Python object per Example and no vector it is not writing.
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
from loom.schemas.keys import hash_keys
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
    book = _Book(ex_files)
    n_ids = book.n
    n_chunks = -(-n_ids // CHUNK)
    prior = _prior_version(output_root, version, ckpt_id, dim)
    prior_at = _PriorVectors(*prior, dim, book) if prior is not None else None
    copy = prior_at.found if prior_at is not None else np.zeros(n_ids, dtype=bool)

    files: dict[int, mf.FileRecord] = {}  # chunk number -> its part
    counts = {"examples": n_ids, "embedded": 0, "copied": 0, "dim": dim, "resumed_chunks": 0}
    missing = np.zeros(n_chunks, dtype=np.int64)  # chunk -> how many vectors are to come
    bar = tqdm(total=n_chunks, desc=f"backfill {version}", unit="chunk", disable=None,
               leave=False)
    fresh: dict[str, np.ndarray] = {}  # vectors of chunks not complete yet

    def write(n: int) -> None:
        ids, sources, modalities = book.chunk_meta(n)
        vectors = np.zeros((len(ids), dim), dtype=np.float32)
        embedded = 0
        for j, i in enumerate(ids):
            if i in fresh:
                vectors[j] = fresh.pop(i)
                embedded += 1
        old = np.flatnonzero(copy[n * CHUNK : n * CHUNK + len(ids)])
        if len(old):
            vectors[old] = prior_at.vectors(n * CHUNK + old, [ids[j] for j in old])
        if embedded + len(old) != len(ids):
            raise RuntimeError(f"backfill chunk {n} got {embedded} new and {len(old)} copied "
                               f"vectors for {len(ids)} ids")
        table = _chunk_table(ids, sources, modalities, vectors, ckpt_id, dim)
        files[n] = writer.write_part(TABLE, f"part-{n:05d}", table)
        counts["embedded"] += embedded
        counts["copied"] += len(old)
        _tick(bar, counts)

    done_parts = {e.uri for e in storage.list_files(storage.join(writer.dir, TABLE), ".parquet")}
    try:
        with timed(timings, "embed_s"):
            todo = np.zeros(n_ids, dtype=bool)  # ids to embed in this run
            for n in range(n_chunks):
                lo, hi = n * CHUNK, min(n_ids, (n + 1) * CHUNK)
                name = f"part-{n:05d}"
                finished = (_finished_part(writer, name, book.chunk_meta(n)[0], ckpt_id, dim)
                            if writer.part_uri(TABLE, name) in done_parts else None)
                if finished is not None:  # a killed run wrote this chunk already
                    files[n] = finished
                    copied = int(copy[lo:hi].sum())
                    counts["copied"] += copied
                    counts["embedded"] += hi - lo - copied
                    counts["resumed_chunks"] += 1
                    _tick(bar, counts)
                    continue
                missing[n] = hi - lo - int(copy[lo:hi].sum())
                if not missing[n]:
                    write(n)
                todo[lo:hi] = ~copy[lo:hi]
            work = book.work(todo)
            actors, cpus, gpus = embed_plan() if missing.any() else (1, 1.0, 0.0)  # no Ray if none
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
                for i, n, vector in zip(got_ids, book.position(got_ids) // CHUNK, got,
                                        strict=True):
                    if i in fresh or n in files:
                        raise RuntimeError(f"backfill embedded {i} twice")
                    fresh[i] = vector
                    missing[n] -= 1
                    if not missing[n]:
                        write(int(n))
    finally:
        bar.close()
    if len(files) != n_chunks:
        raise RuntimeError(f"backfill got no vectors for chunks "
                           f"{sorted(set(range(n_chunks)) - set(files))[:10]}")
    files = [files[n] for n in range(n_chunks)]
    if counts["embedded"] + counts["copied"] != n_ids or sum(f.rows for f in files) != n_ids:
        raise RuntimeError(f"backfill lost or invented rows: {counts}")

    index_info = None
    if faiss_index:
        with timed(timings, "index_s"):
            index_info = _write_index(writer.dir, [storage.join(writer.dir, f.path)
                                                   for f in files], dim)
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
                   dim: int) -> mf.FileRecord | None:
    """A part a killed run of this version completed (write_atomic: whole or absent)."""
    uri = writer.part_uri(TABLE, name)
    body = storage.read_bytes(uri)
    try:
        table = pq.read_table(io.BytesIO(body), columns=["id", "checkpoint", "dim"])
    except Exception:
        return None
    if (table.column("id").to_pylist() != chunk
            or set(table.column("checkpoint").to_pylist()) != {ckpt_id}
            or set(table.column("dim").to_pylist()) != {dim}):
        return None
    return mf.FileRecord(path=f"{TABLE}/{name}.parquet", rows=table.num_rows,
                         sha256=hashlib.sha256(body).hexdigest())


def _keys(ids: list[str]) -> np.ndarray:
    """A 64-bit key per id: what the driver keeps of an id (collisions are checked
    against the ids, so 8 bytes do; the embedding cache's keys take 16)."""
    return hash_keys(ids, 8).view("<u8")


def _id_keys(uris: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The keys of every row of the files' `id` columns, and each file's first row."""
    keys, sizes = [np.zeros(0, np.uint64)], [0]
    for uri in uris:
        keys.append(_keys(storage.read_parquet([uri], columns=["id"]).column("id").to_pylist()))
        sizes.append(len(keys[-1]))
    return np.concatenate(keys), np.cumsum(sizes)


class _Book:
    """Unique Example ids in file and row order (first occurrence wins), as numpy columns:
    the sorted 64-bit keys, each one's place in file order, and the file and row of each
    place, 20 bytes per id and no Python object per id, so the driver's bookkeeping stays
    small at millions of Examples. Ids, sources and modalities are read back per chunk from
    the Examples files when a part is written."""

    def __init__(self, ex_files: list[str]):
        self.ex_files = ex_files
        keys, self.offsets = _id_keys(ex_files)
        order = np.argsort(keys, kind="stable")  # equal keys keep file and row order
        sorted_keys = keys[order]
        del keys
        first = np.ones(len(order), dtype=bool)
        first[1:] = sorted_keys[1:] != sorted_keys[:-1]
        self._cached: tuple[int, pa.Table] | None = None
        for dup in np.flatnonzero(~first):  # the same id again, or two ids on one key
            a, b = self._id_at(order[dup - 1]), self._id_at(order[dup])
            if a != b:
                raise RuntimeError(f"backfill: ids {a!r} and {b!r} share a 64-bit key")
        order, self._sorted = order[first], sorted_keys[first]
        del sorted_keys, first
        pos = np.sort(order)  # global row of each unique id, in file order
        self.n = len(pos)
        small = np.int32 if max(self.n, int(self.offsets[-1])) < 2**31 else np.int64
        self._index = np.searchsorted(pos, order).astype(small)  # sorted key -> file order
        del order
        self.file = (np.searchsorted(self.offsets, pos, side="right") - 1).astype(np.int32)
        self.row = (pos - self.offsets[self.file]).astype(small)

    @property
    def keys(self) -> np.ndarray:
        """Each id's key in file order (built when asked: only a prior version needs it)."""
        keys = np.empty_like(self._sorted)
        keys[self._index] = self._sorted
        return keys

    def _table(self, f: int) -> pa.Table:
        if self._cached is None or self._cached[0] != f:
            self._cached = (f, storage.read_parquet([self.ex_files[f]],
                                                    columns=["id", "modality", "source_uris"]))
        return self._cached[1]

    def _id_at(self, pos: int) -> str:
        f = int(np.searchsorted(self.offsets, pos, side="right") - 1)
        return self._table(f).column("id")[int(pos - self.offsets[f])].as_py()

    def position(self, ids: list[str]) -> np.ndarray:
        """Where each id sits in file order (an id not among the Examples is an error)."""
        keys = _keys(ids)
        at = np.minimum(np.searchsorted(self._sorted, keys), max(0, len(self._sorted) - 1))
        if not len(self._sorted) or (self._sorted[at] != keys).any():
            raise RuntimeError("backfill got a vector for an id that is not an Example")
        return self._index[at]

    def chunk_meta(self, n: int) -> tuple[list[str], list[str | None], list[str]]:
        """Ids, first source URIs and modalities of chunk n, read from its Examples files."""
        ids, sources, modalities = [], [], []
        files, rows = self.file[n * CHUNK : (n + 1) * CHUNK], self.row[n * CHUNK : (n + 1) * CHUNK]
        for f in np.unique(files):  # the chunk's files, in file order (pos is sorted)
            t = self._table(int(f)).take(pa.array(rows[files == f]))
            ids += t.column("id").to_pylist()
            sources += [(s or [None])[0] for s in t.column("source_uris").to_pylist()]
            modalities += t.column("modality").to_pylist()
        return ids, sources, modalities

    def work(self, todo: np.ndarray) -> list[tuple[str, list[int]]]:
        """(Examples file, row spans) of the ids marked in `todo`, per file: the spans are
        [start, stop, start, stop, ...] over runs of consecutive rows, so a file whose
        rows are all to embed is two numbers whatever its size."""
        sel = np.flatnonzero(todo)
        f, r = self.file[sel], self.row[sel]
        new = np.ones(len(sel), dtype=bool)
        new[1:] = (f[1:] != f[:-1]) | (r[1:] != r[:-1] + 1)
        starts = np.flatnonzero(new)
        stops = np.append(starts[1:], len(sel))[: len(starts)] - 1
        spans: list[list[int]] = [[] for _ in self.ex_files]
        for fk, lo, hi in zip(f[starts].tolist(), r[starts].tolist(), r[stops].tolist(),
                              strict=True):
            spans[fk] += [lo, hi + 1]
        return list(zip(self.ex_files, spans, strict=True))


class _PriorVectors:
    """Where a previous backfill holds each current id's vector (`found`, then its part and
    row), from that version's id columns alone; vectors are read per chunk, one part cached."""

    def __init__(self, prior_dir: str, prior_manifest: mf.Manifest, dim: int, book: _Book):
        self.parts, self.dim = prior_manifest.files(prior_dir, TABLE), dim
        keys, offsets = _id_keys(self.parts)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        book_keys = book.keys
        at = np.minimum(np.searchsorted(sorted_keys, book_keys), max(0, len(keys) - 1))
        self.found = (sorted_keys[at] == book_keys) if len(keys) else np.zeros(len(book_keys),
                                                                               dtype=bool)
        self.at = order[at]  # the prior's global row (meaningful where found)
        self.offsets = offsets
        self._cached: tuple[int, pa.Table, np.ndarray] | None = None

    def vectors(self, positions: np.ndarray, ids: list[str]) -> np.ndarray:
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        for j, (prior_row, want) in enumerate(zip(self.at[positions], ids, strict=True)):
            p = int(np.searchsorted(self.offsets, prior_row, side="right") - 1)
            if self._cached is None or self._cached[0] != p:
                table = storage.read_parquet([self.parts[p]], columns=["id", "vector"])
                self._cached = (p, table.column("id"), _vectors(table, self.dim))
            r = int(prior_row - self.offsets[p])
            if self._cached[1][r].as_py() != want:
                raise RuntimeError(f"backfill: the previous version's row for {want!r} holds "
                                   "another id")
            out[j] = self._cached[2][r]
        return out


def _chunk_table(ids: list[str], sources: list[str | None], modalities: list[str],
                 vectors: np.ndarray, ckpt_id: str, dim: int) -> pa.Table:
    if vectors.shape != (len(ids), dim):
        raise RuntimeError(f"embeddings of a chunk have shape {vectors.shape}, not "
                           f"({len(ids)}, {dim})")
    offsets = pa.array(np.arange(0, (len(ids) + 1) * dim, dim, dtype=np.int32))
    return pa.table({
        "id": pa.array(ids, pa.string()),
        "source_uri": pa.array(sources, pa.string()),
        "modality": pa.array(modalities, pa.string()),
        "checkpoint": pa.array([ckpt_id] * len(ids), pa.string()),
        "dim": pa.array([dim] * len(ids), pa.int32()),
        "vector": pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1))),
    }, schema=EMBEDDING)


def _vectors(table: pa.Table, dim: int) -> np.ndarray:
    values = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(-1, dim)


def _write_index(version_dir: str, parts: list[str], dim: int) -> dict:
    """Built by a Ray task from the parts in storage: the driver never holds the vectors."""
    import ray
    from loom.pipelines.ray.session import ensure_ray

    ensure_ray()
    return ray.get(ray.remote(num_cpus=1)(_build_index).remote(version_dir, parts, dim))


def _build_index(version_dir: str, parts: list[str], dim: int) -> dict:
    """An exact inner-product index over the unit vectors; row i of the index is the i-th
    id of the parts in order."""
    import faiss

    index, ids = faiss.IndexFlatIP(dim), []
    for uri in parts:
        table = storage.read_parquet([uri], columns=["id", "vector"])
        index.add(np.ascontiguousarray(_vectors(table, dim)))
        ids += table.column("id").to_pylist()
    if index.ntotal != len(ids):
        raise RuntimeError(f"index has {index.ntotal} vectors for {len(ids)} ids")
    storage.write_atomic(storage.join(version_dir, INDEX_IDS_FILE), json.dumps(ids).encode())
    storage.write_atomic(storage.join(version_dir, INDEX_FILE),
                         faiss.serialize_index(index).tobytes())
    return {"index": INDEX_FILE, "ids": INDEX_IDS_FILE, "ntotal": int(index.ntotal),
            "metric": "inner_product"}


def _tick(bar: tqdm, counts: dict) -> None:
    bar.set_postfix({"embedded": counts["embedded"], "copied": counts["copied"]}, refresh=False)
    bar.update(1)
