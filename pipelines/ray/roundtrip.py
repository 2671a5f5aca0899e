"""Synth's round-trip filter on Ray: the driver passes file names and gets counts back.

A text query is kept when its checkpoint ranks the query's own corpus positive in the top
k of every corpus Example of the positive's modality. Steps:

1. `positive_modalities` (a task): the modalities whose galleries the round trip needs.
2. `embed_missing` (mine's Ray Data job) with `read_unit` as its reader: reading tasks
   turn Pairs files into query ITEMs (text queries whose positive is a corpus Example) and
   Examples files into gallery ITEMs of those modalities (every split), each writing its
   plan part; the actor pool embeds what the embedding cache lacks into it (the cache mine
   and eval use for the same checkpoint, so a re-run or a later mine pays nothing twice).
3. `find_misses` (a task): per modality, gallery vectors in corpus order and query vectors
   from the cache into local memory maps, top k a query chunk at a time; the pair_ids
   whose positive misses it are written as one Parquet file.
4. `drop_misses` (a task per Pairs part): the part without them, under its own name.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from loom.models.handler import EncoderHandler
from loom.pipelines.embed_cache import EmbeddingCache, cache_keys, item_digest
from loom.pipelines.ray.mine import _items_table
from loom.pipelines.synth_dedupe import without_pairs
from loom.schemas import storage
from loom.schemas.manifest import FileRecord
from loom.schemas.records import rows_of

QUERY_COLUMNS = ["pair_id", "query_text", "query_modality", "positive_id",
                 "positive_modality", "positive_text"]
QUERY_PLAN = pa.schema([("pair_id", pa.string()), ("positive_id", pa.string()),
                        ("positive_modality", pa.string()), ("digest", pa.string())])
GALLERY_PLAN = pa.schema([("id", pa.string()), ("modality", pa.string()),
                          ("digest", pa.string())])


def _round_trip_queries(table: pa.Table) -> pa.Table:
    """The Pairs rows the round trip checks: text queries whose positive is a corpus
    Example (no inline positive text)."""
    inline = pc.fill_null(pc.not_equal(table.column("positive_text"), ""), False)
    return table.filter(pc.and_(pc.equal(table.column("query_modality"), "text"),
                                pc.invert(inline)))


@ray.remote
def positive_modalities(pair_files: list[str]) -> list[str]:
    found: set[str] = set()
    for uri in pair_files:
        t = _round_trip_queries(storage.read_parquet([uri], columns=QUERY_COLUMNS))
        found.update(pc.unique(t.column("positive_modality")).to_pylist())
    return sorted(found)


def read_unit(unit: dict, handler: EncoderHandler, modalities: list[str]) -> pa.Table:
    """`embed_missing`'s reader: one unit of Pairs files (their round-trip queries) or of
    Examples files (their rows of `modalities`) -> ITEMs, with the unit's plan written."""
    prep = handler.inputs()
    if unit["role"] == "queries":
        t = _round_trip_queries(storage.read_parquet(unit["uris"], columns=QUERY_COLUMNS))
        items = [prep.query(p, q) for p, q in zip(t.column("pair_id").to_pylist(),
                                                   t.column("query_text").to_pylist(),
                                                   strict=True)]
        digests = [item_digest(it) for it in items]
        storage.write_parquet(pa.table([t.column("pair_id"), t.column("positive_id"),
                                        t.column("positive_modality"), pa.array(digests)],
                                       schema=QUERY_PLAN), unit["plan"])
        unique = dict(zip(digests, items, strict=True))
        return _items_table([it | {"id": f"q:{d}"} for d, it in unique.items()], list(unique),
                            [1] * len(unique))
    wanted = pa.array(modalities, pa.string())
    items, plan = [], []
    for uri in unit["uris"]:
        mods = storage.read_parquet([uri], columns=["modality"]).column("modality")
        take = np.flatnonzero(pc.is_in(mods, value_set=wanted).to_numpy(zero_copy_only=False))
        if len(take):
            rows = rows_of(storage.read_parquet([uri], columns=["id", "modality", "parts"])
                           .take(take))
            items += [prep.example(e) for e in rows]
            plan += [(e["id"], e["modality"]) for e in rows]
    digests = [item_digest(it) for it in items]
    storage.write_parquet(pa.table([pa.array([p[0] for p in plan], pa.string()),
                                    pa.array([p[1] for p in plan], pa.string()),
                                    pa.array(digests, pa.string())], schema=GALLERY_PLAN),
                          unit["plan"])
    return _items_table(items, digests, [1] * len(items))


def _vectors(cache: EmbeddingCache, keys: np.ndarray, local: str) -> np.ndarray:
    """The cached vectors of `keys` (in their order, repeats allowed) as a local memory map."""
    unique, where = np.unique(keys, return_inverse=True)
    vecs = np.zeros((len(unique), cache.dim), np.float32)
    if (found := cache.fill(unique, vecs)) != len(unique):
        raise RuntimeError(f"embedding cache {cache.dir} lacks {len(unique) - found} of "
                           f"{len(unique)} vectors this round trip embedded or found")
    out = np.lib.format.open_memmap(local, "w+", np.float32, (len(keys), cache.dim))
    step = max(1, (1 << 22) // (4 * cache.dim))
    for s in range(0, len(keys), step):
        out[s : s + step] = vecs[where[s : s + step]]
    out.flush()
    del out, vecs
    return np.load(local, mmap_mode="r")


def _read_parts(uris: list[str], schema: pa.Schema) -> pa.Table:
    """Plan parts concatenated in the order given (the corpus order)."""
    tables = [storage.read_parquet([u], schema=schema) for u in uris]
    return pa.concat_tables(tables) if tables else schema.empty_table()


@ray.remote
def find_misses(cache: EmbeddingCache, query_plans: list[str], gallery_plans: list[str],
                k: int, out_uri: str) -> int:
    """Step 3 (module docstring): how many queries miss; their pair_ids in `out_uri`."""
    from loom.pipelines.evaluate import top_k_chunked

    queries = _read_parts(query_plans, QUERY_PLAN)
    gallery = _read_parts(gallery_plans, GALLERY_PLAN)
    misses = []
    tmp = tempfile.mkdtemp(prefix="loom-roundtrip-")
    try:
        for m in sorted(set(queries.column("positive_modality").to_pylist())):
            qs = queries.filter(pc.equal(queries.column("positive_modality"), m))
            gs = gallery.filter(pc.equal(gallery.column("modality"), m))
            row = pc.index_in(qs.column("positive_id"), value_set=gs.column("id"))
            row = pc.fill_null(row, -1).to_numpy(zero_copy_only=False)
            if not gs.num_rows:
                misses.append(qs.column("pair_id"))
                continue
            g = _vectors(cache, cache_keys(gs.column("id").to_pylist(),
                                           gs.column("digest").to_pylist()),
                         os.path.join(tmp, f"gallery-{m}.npy"))
            digests = qs.column("digest").to_pylist()
            q = _vectors(cache, cache_keys([f"q:{d}" for d in digests], digests),
                         os.path.join(tmp, f"queries-{m}.npy"))
            top = top_k_chunked(np.asarray(q), g, min(k, len(g)))  # <= SCORE_BYTES at once
            hit = (top == row[:, None]).any(axis=1) & (row >= 0)
            misses.append(qs.column("pair_id").filter(pa.array(~hit)))
            del g, q
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ids = pa.chunked_array(misses, pa.string()) if misses else pa.chunked_array([], pa.string())
    storage.write_parquet(pa.table({"pair_id": ids}), out_uri)
    return len(ids)


@ray.remote
def drop_misses(version_dir: str, record: FileRecord, misses_uri: str
                ) -> tuple[FileRecord | None, int]:
    """One Pairs part without the misses, under its own name (None: nothing left), and how
    many held-out pairs it lost."""
    drop = storage.read_parquet([misses_uri]).column("pair_id")
    kept, dropped, heldout = without_pairs(version_dir, record.path, drop)
    return (kept if dropped else record), heldout
