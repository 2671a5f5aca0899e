"""Mine's Ray steps: the driver passes file names and gets counts back, never rows.

1. `prepare_queries` (one task): the train Pairs (PAIR_BATCH at a time as dicts), the
   Examples their queries cite (read from the files that hold them), query and
   inline-positive ITEMs deduplicated by digest (first seen spilled to a local file),
   written as item parts, and a plan: the kept Pairs with their keys, in pair_id order
   (`q_pos`: a Pair's place before that sort, which the calibration sample draws from), one
   file per query slice of SLICE_ROWS.
2. `embed_missing` (one Ray Data job): reading tasks turn Examples files (train rows
   only) and the query item parts into ITEMs with their digests, write the corpus plan
   (id, modality, digest, asset keys) per file group, and drop what the cache holds
   (checked against its sorted key array, which a task reads into the object store); the
   actor pool embeds the rest and writing tasks store it as cache parts.
3. `assemble` (a task): the corpus plan in (modality, id) order and its vectors from the
   cache: one float32 .npy per modality, queries.npy and positives.npy in the run's work
   folder; and the modalities' calibration profile, sampled over every query.
4. `search` (a task per query slice): fetches the corpus files and its slice's rows of the
   query files into its own local temp (nodes share no disk), maps them and runs
   transforms.mining (per modality, in query chunks) with that profile, then writes its
   triples parts. Slices start at multiples of ROWS_PER_PART of the pair_id order, so the
   parts (and their names) are those of one search over every query; the driver adds up
   the slices' counts and histograms (transforms.mining.merge_results). A worker holds the
   corpus metadata as Arrow and numpy and one slice's Pairs: its memory follows
   SLICE_ROWS, not the number of queries.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import shutil
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from loom.models.handler import EncoderHandler
from loom.pipelines.embed_cache import PART_ROWS, EmbeddingCache, cache_keys, item_digest
from loom.pipelines.ray.embed import ROWS_PER_CALL, _actors
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import TRIPLE, Split, rows_of
from loom.schemas.splits import example_split
from loom.transforms.items import positive_item, query_item
from loom.transforms.mining import Candidates, MiningConfig, mine, sampled_profile

ROWS_PER_PART = 4096  # triples per output part
SLICE_ROWS = 12 * ROWS_PER_PART  # queries per search task (a multiple of ROWS_PER_PART)
ITEM_COLUMNS = ("id", "digest", "count", "item_pickle")
CHUNK_BYTES = 1 << 22  # .npy bytes copied at once
PAIR_BATCH = 4096  # Pairs turned into dicts (and ITEMs) at a time by prepare_queries
_SPILL = pa.schema([("digest", pa.string()), ("item_pickle", pa.binary())])


def _items_table(items: list[dict], digests: list[str], counts: list[int]) -> pa.Table:
    return pa.table({"id": pa.array([it["id"] for it in items], pa.string()),
                     "digest": pa.array(digests, pa.string()),
                     "count": pa.array(counts, pa.int64()),
                     "item_pickle": pa.array([pickle.dumps(it) for it in items], pa.binary())})


@ray.remote
def prepare_queries(pairs_dir: str, pairs_manifest: mf.Manifest, example_files: list[str],
                    heldout_fraction: float, handler: EncoderHandler, work: str,
                    slice_rows: int = SLICE_ROWS, batch_rows: int = PAIR_BATCH) -> dict:
    """The train Pairs, `batch_rows` at a time as dicts: each batch's query and positive
    ITEMs are digested, and an ITEM seen for the first time goes (pickled) to a local
    spill file; the plan keeps the digests as Arrow. The item parts are written from the
    spill, with each digest's count of positions from an Arrow value count. The task
    holds the Pairs as Arrow, a batch of dicts, the set of digests seen and the cited
    Examples, not every Pair and ITEM as dicts (+357 MB RSS at 100k pairs, +3.1 GB at 1M)."""
    prep = handler.inputs()
    tokenizer, max_tokens = prep.tokenizer, prep.spec.max_text_tokens
    table = mf.read_table(pairs_dir, pairs_manifest, "pairs")
    table = table.filter(pc.equal(table.column("split"), Split.TRAIN.value))
    refs = pc.struct_field(table.column("query_ref"), "example_id").drop_null().unique()
    by_id: dict[str, dict] = {}  # the cited Examples of the train corpus
    for uri in example_files if len(refs) else []:
        ids = storage.read_parquet([uri], columns=["id"]).column("id")
        rows = np.flatnonzero(pc.is_in(ids, value_set=refs).to_numpy(zero_copy_only=False))
        if len(rows):
            for e in rows_of(storage.read_parquet([uri]).take(rows)):  # features: float16
                if example_split(e, heldout_fraction) == Split.TRAIN:
                    by_id[e["id"]] = e
    seen: set[str] = set()
    spill_dir = tempfile.mkdtemp(prefix="loom-queries-")
    try:
        spill = pq.ParquetWriter(os.path.join(spill_dir, "items.parquet"), _SPILL)
        pending: list[tuple[str, bytes]] = []

        def key(item: dict | None) -> str | None:
            if item is None:
                return None
            d = item_digest(item)
            if d not in seen:
                seen.add(d)
                pending.append((d, pickle.dumps(item | {"id": f"q:{d}"})))
            return d

        kept, q_keys, p_keys = [], [], []
        for lo in range(0, len(table), batch_rows):
            rows, qs, ps = [], [], []
            for i, p in enumerate(rows_of(table.slice(lo, batch_rows))):  # float16 features
                q = query_item(p, by_id, tokenizer, max_tokens)
                if q is None:
                    continue
                rows.append(lo + i)
                qs.append(key(q))
                ps.append(key(positive_item(p, by_id, tokenizer, max_tokens))
                          if p.get("positive_text") else None)
            kept.append(np.array(rows, np.int64))
            q_keys.append(pa.array(qs, pa.string()))
            p_keys.append(pa.array(ps, pa.string()))
            if pending:
                spill.write_table(pa.table({"digest": pa.array([d for d, _ in pending], pa.string()),
                                            "item_pickle": pa.array([b for _, b in pending],
                                                                    pa.binary())}, schema=_SPILL))
                pending.clear()
        spill.close()
        del by_id
        seen.clear()
        kept_rows = np.concatenate(kept) if kept else np.zeros(0, np.int64)
        n_train = len(table)
        # one copy of the kept Pairs, already in pair_id order (a stable sort: q_pos is a
        # Pair's place before it), then the train table goes
        order = pc.sort_indices(table.column("pair_id").take(kept_rows)).to_numpy()
        plan = table.take(kept_rows[order]) \
            .append_column("q_digest", pa.chunked_array(q_keys, pa.string()).take(order)) \
            .append_column("p_digest", pa.chunked_array(p_keys, pa.string()).take(order)) \
            .append_column("q_pos", pa.array(order.astype(np.int64)))
        del table
        plan_uris, slices = [], []
        for lo in range(0, max(len(plan), 1), slice_rows):
            plan_uris.append(storage.join(work, "queries", f"plan-{lo // slice_rows:05d}.parquet"))
            storage.write_parquet(plan.slice(lo, slice_rows), plan_uris[-1])
            slices.append([lo, min(lo + slice_rows, len(plan))])
        del plan
        counted = pc.value_counts(pa.chunked_array(q_keys + p_keys, pa.string()).drop_null())
        values, counts = counted.field("values"), counted.field("counts")
        parts = []
        spilled = pq.ParquetFile(os.path.join(spill_dir, "items.parquet"))
        for n, batch in enumerate(spilled.iter_batches(batch_size=ROWS_PER_CALL)):
            digests = batch.column("digest")
            uri = storage.join(work, "queries", f"items-{n:05d}.parquet")
            storage.write_parquet(pa.table({
                "id": pc.binary_join_element_wise("q:", digests, ""),
                "digest": digests,
                "count": counts.take(pc.index_in(digests, value_set=values)).cast(pa.int64()),
                "item_pickle": batch.column("item_pickle")}), uri)
            parts.append(uri)
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    return {"plan": plan_uris, "slices": slices, "item_parts": parts,
            "missing_query": n_train - len(kept_rows),
            "positions": int(pc.sum(counts).as_py() or 0)}


def _prepare(batch: pa.Table, read, cached: list) -> pa.Table:
    """Ray Data task: one work unit (Examples files, or query item parts) -> the ITEMs the
    cache lacks. `read` turns an Examples unit into ITEMs (and writes its plan part)."""
    unit = batch.to_pylist()[0]
    if unit["kind"] == "items":
        items = storage.read_parquet(unit["uris"], columns=list(ITEM_COLUMNS))
    else:
        items = read(unit)
    have = ray.get(cached[0])
    keys = cache_keys(items.column("id").to_pylist(), items.column("digest").to_pylist())
    if not len(have) or not len(keys):
        return items
    pos = np.minimum(np.searchsorted(have, keys), len(have) - 1)
    return items.filter(pa.array(have[pos] != keys))


def corpus_items(unit: dict, handler: EncoderHandler, heldout_fraction: float) -> pa.Table:
    """Mine's reader: an Examples unit's train rows as ITEMs; writes its plan part (every
    train row, cached or not)."""
    prep = handler.inputs()
    rows = [e for uri in unit["uris"] for e in rows_of(storage.read_parquet([uri]))
            if example_split(e, heldout_fraction) == Split.TRAIN]  # features: float16
    prepared = [prep.example(e) for e in rows]  # re-tokenized with its tokenizer
    digests = [item_digest(it) for it in prepared]
    storage.write_parquet(pa.table({
        "id": pa.array([e["id"] for e in rows], pa.string()),
        "modality": pa.array([e["modality"] for e in rows], pa.string()),
        "digest": pa.array(digests, pa.string()),
        "keys": pa.array([_asset_keys(e) for e in rows], pa.list_(pa.string()))}),
        unit["plan"])
    return _items_table(prepared, digests, [1] * len(prepared))


@ray.remote
def _cached_keys(cache: EmbeddingCache) -> np.ndarray:
    return cache.cached_keys()


def _write_cache(batch: dict[str, np.ndarray], cache: EmbeddingCache) -> dict[str, np.ndarray]:
    cache.write_part(list(batch["id"]), list(batch["digest"]), batch["vector"])
    return {"embedded": np.array([len(batch["id"])]),
            "positions": np.array([int(np.sum(batch["count"]))])}


def embed_missing(units: list[dict], cache: EmbeddingCache, handler: EncoderHandler,
                  heldout_fraction: float, actors: int, cpus_per_actor: float,
                  gpus_per_actor: float, read=None) -> dict[str, int]:
    """Embeds every ITEM of `units` the cache lacks; returns how many (distinct keys, and
    the positions they stand for). `read` turns an Examples unit into ITEMs (default:
    mine's `corpus_items`; eval passes its gallery reader)."""
    if not units:
        return {"embedded": 0, "positions": 0}
    cached = [_cached_keys.remote(cache)]  # in a list: the tasks fetch it, zero-copy
    ds = ray.data.from_items(units, override_num_blocks=len(units))
    read = read or functools.partial(corpus_items, handler=handler,
                                     heldout_fraction=heldout_fraction)
    ds = ds.map_batches(functools.partial(_prepare, read=read, cached=cached),
                        batch_size=1, batch_format="pyarrow", num_cpus=0, concurrency=1)
    ds = _actors(ds, handler, ROWS_PER_CALL, actors, cpus_per_actor, gpus_per_actor)
    ds = ds.map_batches(functools.partial(_write_cache, cache=cache), batch_size=PART_ROWS,
                        batch_format="numpy", num_cpus=0, concurrency=1)
    out = {"embedded": 0, "positions": 0}
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        out = {k: v + int(np.sum(b[k])) for k, v in out.items()}
    return out


def _upload(local: str, uri: str) -> None:
    """A local file to storage, streamed (atomic: GCS uploads are; local goes by rename)."""
    fs, path = storage.resolve(uri)
    if not storage.is_remote(uri):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), storage.tmp_name(os.path.basename(path)))
        shutil.copyfile(local, tmp)
        os.replace(tmp, path)
        return
    with open(local, "rb") as src, fs.open_output_stream(path, compression=None) as dst:
        shutil.copyfileobj(src, dst, CHUNK_BYTES)


def _header(f) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read(f)
    return shape, dtype


def _rows_of(uri: str) -> int:
    fs, path = storage.resolve(uri)
    with fs.open_input_stream(path, compression=None) as f:
        return _header(f)[0][0]


def _fetch_into(uri: str, out: np.ndarray) -> None:
    """A stored .npy streamed into `out` (rows of a local memory map)."""
    fs, path = storage.resolve(uri)
    with fs.open_input_stream(path, compression=None) as f:
        shape, dtype = _header(f)
        if shape != out.shape or dtype != out.dtype:
            raise RuntimeError(f"{uri}: {shape} {dtype}, expected {out.shape} {out.dtype}")
        flat, at = out.reshape(-1).view(np.uint8), 0
        while at < len(flat):
            chunk = f.read(min(CHUNK_BYTES, len(flat) - at))
            if not chunk:
                raise RuntimeError(f"{uri}: truncated at byte {at} of {len(flat)}")
            flat[at : at + len(chunk)] = np.frombuffer(chunk, np.uint8)
            at += len(chunk)


def _store_rows(src: np.ndarray, rows: np.ndarray, uri: str, tmp: str) -> None:
    """src[rows] as a .npy at `uri`, gathered a chunk at a time into a local file first."""
    local = os.path.join(tmp, "out.npy")
    if not len(rows):  # no map of an empty file
        np.save(local, np.zeros((0, src.shape[1]), np.float32))
        _upload(local, uri)
        return
    out = np.lib.format.open_memmap(local, "w+", np.float32, (len(rows), src.shape[1]))
    step = max(1, CHUNK_BYTES // (4 * src.shape[1]))
    for s in range(0, len(rows), step):
        out[s : s + step] = src[rows[s : s + step]]
    out.flush()
    del out
    _upload(local, uri)
    os.unlink(local)


@ray.remote
def assemble(cache: EmbeddingCache, plan_parts: list[str], query_plan: list[str], work: str,
             config: MiningConfig) -> dict:
    """Vectors of the corpus (per modality, in (modality, id) order), queries and inline
    positives from the cache, as .npy files in `work`; returns the modality spans and the
    calibration profile (`sampled_profile` over every query, in the plan's first order)."""
    plan = storage.read_parquet(plan_parts, columns=["id", "modality", "digest", "keys"]) \
        if plan_parts else pa.table({"id": pa.array([], pa.string()),
                                     "modality": pa.array([], pa.string()),
                                     "digest": pa.array([], pa.string()),
                                     "keys": pa.array([], pa.list_(pa.string()))})
    plan = plan.take(pc.sort_indices(plan, [("modality", "ascending"), ("id", "ascending")]))
    storage.write_parquet(plan, storage.join(work, "vectors", "corpus.parquet"))
    queries = storage.read_parquet(query_plan, columns=["q_digest", "p_digest", "q_pos"])
    q_dig = queries.column("q_digest").to_pylist()
    p_dig = queries.column("p_digest").to_pylist()
    inline = [i for i, d in enumerate(p_dig) if d is not None]
    keys = np.concatenate([
        cache_keys(plan.column("id").to_pylist(), plan.column("digest").to_pylist()),
        cache_keys([f"q:{d}" for d in q_dig], q_dig),
        cache_keys([f"q:{p_dig[i]}" for i in inline], [p_dig[i] for i in inline])])
    unique, where = np.unique(keys, return_inverse=True)
    tmp = tempfile.mkdtemp(prefix="loom-mine-")
    try:
        vecs = np.lib.format.open_memmap(os.path.join(tmp, "unique.npy"), "w+", np.float32,
                                         (len(unique), cache.dim)) if len(unique) else \
            np.zeros((0, cache.dim), np.float32)
        if (found := cache.fill(unique, vecs)) != len(unique):
            raise RuntimeError(f"embedding cache {cache.dir} lacks {len(unique) - found} of "
                               f"{len(unique)} vectors this run embedded or found")
        mods = plan.column("modality").to_pylist()
        spans: dict[str, list[int]] = {}
        for row, m in enumerate(mods):
            spans.setdefault(m, [row, row])[1] = row + 1
        for m, (lo, hi) in spans.items():
            _store_rows(vecs, where[lo:hi], storage.join(work, "vectors", f"{m}.npy"), tmp)
        n = len(mods)
        _store_rows(vecs, where[n : n + len(q_dig)], storage.join(work, "vectors", "queries.npy"),
                    tmp)
        at = np.empty(len(q_dig), dtype=np.int64)  # a query's first place -> its row now
        at[queries.column("q_pos").to_numpy()] = np.arange(len(q_dig))
        profile = sampled_profile(spans, lambda rows: vecs[where[rows]], len(q_dig),
                                  lambda pos: vecs[where[n + at[pos]]], config) if n else {}
        positives = np.full((len(q_dig), cache.dim), np.nan, dtype=np.float32)
        positives[inline] = vecs[where[n + len(q_dig) :]]
        np.save(os.path.join(tmp, "positives.npy"), positives)
        _upload(os.path.join(tmp, "positives.npy"), storage.join(work, "vectors", "positives.npy"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"spans": spans, "corpus": n, "profile": profile}


def _local_copy(uris: list[str], rows: int, dim: int, local: str, lo: int = 0) -> np.ndarray:
    """Rows [lo, lo + rows) of stored .npy files, one after another, as one read-only local
    memory map (written through a file, never mapped while it fills)."""
    if not rows:
        return np.zeros((0, dim), np.float32)
    with open(local, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
            "fortran_order": False, "shape": (rows, dim)})
        left = rows
        for uri in uris:
            fs, path = storage.resolve(uri)
            with fs.open_input_file(path) as f:
                shape, dtype = _header(f)
                if len(shape) != 2 or shape[1] != dim or dtype != np.float32:
                    raise RuntimeError(f"{uri}: {shape} {dtype}, expected (*, {dim}) float32")
                skip = min(lo, shape[0])
                lo -= skip
                take = min(shape[0] - skip, left)
                f.seek(f.tell() + skip * dim * 4)
                todo = take * dim * 4
                while todo:
                    chunk = f.read(min(CHUNK_BYTES, todo))
                    if not chunk:
                        raise RuntimeError(f"{uri}: truncated")
                    out.write(chunk)
                    todo -= len(chunk)
                left -= take
        if left:
            raise RuntimeError(f"{uris}: {left} of {rows} rows missing")
    return np.load(local, mmap_mode="r")


@ray.remote
def search(work: str, spans: dict[str, list[int]], config: MiningConfig, version_dir: str,
           checkpoint: str, dim: int, plan: str, lo: int, hi: int, profile: dict,
           rows_per_part: int = ROWS_PER_PART) -> dict:
    """The search over queries [lo, hi) of the pair_id-ordered plan (the file `plan`) and
    their triples parts, on a worker, from the vectors `assemble` stored."""
    if lo % rows_per_part:
        raise ValueError(f"a query slice starts at {lo}, not a multiple of {rows_per_part}")
    tmp = tempfile.mkdtemp(prefix="loom-search-")
    try:
        vdir = storage.join(work, "vectors")
        order = sorted(spans, key=lambda m: spans[m][0])
        n = sum(b - a for a, b in spans.values())
        cand_vecs = _local_copy([storage.join(vdir, f"{m}.npy") for m in order], n, dim,
                                os.path.join(tmp, "corpus.npy"))
        pairs = rows_of(storage.read_parquet([plan]))
        if len(pairs) != hi - lo:
            raise RuntimeError(f"{plan}: {len(pairs)} rows, expected {hi - lo}")
        q_vecs = _local_copy([storage.join(vdir, "queries.npy")], hi - lo, dim,
                             os.path.join(tmp, "queries.npy"), lo)
        pos_vecs = _local_copy([storage.join(vdir, "positives.npy")], hi - lo, dim,
                               os.path.join(tmp, "positives.npy"), lo)
        corpus = storage.read_parquet([storage.join(vdir, "corpus.parquet")])
        cands = Candidates.build(corpus.column("id"), corpus.column("modality"), cand_vecs,
                                 corpus.column("keys"), corpus.column("digest"))
        del corpus
        mined = mine(cands, q_vecs, [p["pair_id"] for p in pairs],
                     [p["positive_id"] for p in pairs], [p["positive_modality"] for p in pairs],
                     config, positive_vectors=np.asarray(pos_vecs),
                     anchor_ids=[(p.get("query_ref") or {}).get("example_id") for p in pairs],
                     profile=profile)
        del cands, cand_vecs, q_vecs, pos_vecs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cfg = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    rows = [{name: p.get(name) for name in TRIPLE.names}
            | {"positive_score": None if s != s else float(s), "negatives": negs,
               "checkpoint": checkpoint, "mining_config": cfg}
            for p, s, negs in zip(pairs, mined.positive_scores, mined.negatives, strict=True)]
    del pairs
    rows.sort(key=lambda r: r["pair_id"])  # the plan's order already: a check, not a change
    files = [mf.write_part(version_dir, "triples", f"part-{(lo + i) // rows_per_part:05d}",
                           pa.Table.from_pylist(rows[i : i + rows_per_part], schema=TRIPLE))
             for i in range(0, len(rows), rows_per_part)]
    return {"files": files, "triples": len(rows),
            "negatives": sum(len(r["negatives"]) for r in rows), "counts": mined.counts,
            "histograms": mined.histograms, "search": mined.search,
            "modalities": mined.modalities}


def _asset_keys(example: dict) -> list[str]:
    """Keys shared by parts and sources of one asset: PDF document id, source URIs."""
    keys = [f"src:{u}" for u in example.get("source_uris") or []]
    meta = json.loads(example["metadata"]) if example.get("metadata") else {}
    if isinstance(meta, dict) and meta.get("document_id"):
        keys.append(f"doc:{meta['document_id']}")
    return keys
