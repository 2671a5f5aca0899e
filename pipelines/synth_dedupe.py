"""Synth's run-wide duplicate filter as an engine exchange (Beam or Ray, as the stage ran).

One Pair per duplicate key (`synth.filters.duplicate_key`) across the whole run; the
smallest pair_id of a key stays. Three steps over the written pairs parts:

1. map, per part: its rows' (key, pair_id, part) as Arrow, split over B buckets by a
   hash of the key (md5, the same in every process), one IPC value per bucket;
2. per bucket: every key of the run lies in one bucket, so the smallest pair_id per key
   is known there; the other pair_ids go to the part they live in (key = part);
3. per part that loses rows: the part is rewritten without them under its own name, or
   deleted when nothing is left; its file record and how many it lost (and how many of
   those were held out) come back.

The driver holds the list of parts and what comes back (a record and a count per part
that lost rows): no keys, no pair_ids.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from loom.pipelines.exchange import Exchange, KeyValues, buckets_of, from_ipc, to_ipc
from loom.pipelines.runner import Engine, EngineOptions, run_exchange
from loom.schemas import storage
from loom.schemas.manifest import FileRecord, write_part
from loom.schemas.records import Split
from loom.synth import filters as qf

KEY_COLUMNS = ["pair_id", "query_text", "query_modality", "positive_modality",
               "positive_text"]
ROWS_PER_BUCKET = 1 << 16  # what one bucket's reducer holds, about (keys of ~100 bytes)
MAX_BUCKETS = 1 << 12


def bucket_count(rows: int) -> int:
    return min(MAX_BUCKETS, max(1, -(-rows // ROWS_PER_BUCKET)))


class DedupeSteps:
    """Picklable: the version, its pairs parts (paths, in the run's order), the buckets."""

    def __init__(self, version_dir: str, paths: list[str], buckets: int):
        self.version_dir, self.paths, self.buckets = version_dir, paths, buckets

    def map(self, item: dict) -> KeyValues:
        """One part: its (key, pair_id, part) rows, a value per bucket they fall in."""
        part = storage.read_parquet([storage.join(self.version_dir, self.paths[item["part"]])],
                                    columns=KEY_COLUMNS)
        keys = [qf.duplicate_key(r) for r in part.to_pylist()]
        if not keys:
            return
        rows = pa.table({"key": pa.array(keys, pa.string()),
                         "pair_id": part.column("pair_id").combine_chunks().cast(pa.string()),
                         "part": pa.array(np.full(len(keys), item["part"], np.int64))})
        b = buckets_of(keys, self.buckets)
        for n in np.unique(b):
            yield f"{n:06d}", to_ipc(rows.filter(pa.array(b == n)))

    def drop(self, key: str, values: list[bytes]) -> KeyValues:
        """One bucket: every pair_id that is not its key's smallest, to its part."""
        rows = pa.concat_tables([from_ipc(v) for v in values])
        first = rows.group_by("key", use_threads=False).aggregate([("pair_id", "min")])
        rows = rows.join(first, "key", use_threads=False)
        dropped = rows.filter(pc.not_equal(rows.column("pair_id"), rows.column("pair_id_min")))
        parts = dropped.column("part").to_numpy()
        for p in np.unique(parts):
            yield f"{p:06d}", to_ipc(dropped.filter(pa.array(parts == p)).select(["pair_id"]))

    def rewrite(self, key: str, values: list[bytes]) -> KeyValues:
        """One part that loses rows: rewritten under its own name (deleted if emptied)."""
        drop = pa.concat_tables([from_ipc(v) for v in values]).column("pair_id")
        record, dropped, heldout = without_pairs(self.version_dir, self.paths[int(key)], drop)
        yield key, json.dumps({"record": record.to_json() if record else None,
                               "dropped": dropped, "heldout": heldout}).encode()


def without_pairs(version_dir: str, path: str, drop: pa.Array
                  ) -> tuple[FileRecord | None, int, int]:
    """A Pairs part without the pair_ids in `drop`, rewritten under its own name (deleted
    if emptied): (its new record, None when deleted; rows dropped; how many of them were
    held out). A part holding none of them is left as it is: (None, 0, 0), its record
    unchanged."""
    uri = storage.join(version_dir, path)
    table = storage.read_parquet([uri])
    mask = pc.is_in(table.column("pair_id"), value_set=drop)
    kept = table.filter(pc.invert(mask))
    dropped = table.num_rows - kept.num_rows
    if not dropped:
        return None, 0, 0
    heldout = pc.sum(pc.and_(mask, pc.equal(table.column("split"), Split.HELDOUT.value))).as_py()
    if not kept.num_rows:
        storage.delete(uri)
        return None, dropped, heldout or 0
    name = path.split("/", 1)[1].removesuffix(".parquet")  # the filtered part replaces it
    return write_part(version_dir, "pairs", name, kept), dropped, heldout or 0


def drop_duplicates(engine: Engine | str | EngineOptions, version_dir: str,
                    files: list[FileRecord], buckets: int | None = None
                    ) -> tuple[list[FileRecord], int, int]:
    """The pairs parts without duplicate queries (in the order given; a part that lost every
    row is gone), how many rows were dropped and how many of those were held out."""
    if not files:
        return files, 0, 0
    steps = DedupeSteps(version_dir, [f.path for f in files],
                        buckets or bucket_count(sum(f.rows for f in files)))
    items = [{"name": f"pairs-{n:05d}", "part": n} for n in range(len(files))]
    changed = {int(k): json.loads(v) for k, v in run_exchange(
        engine, Exchange(version_dir, steps.map, (steps.drop, steps.rewrite), "synth-dedupe"),
        items)}
    out = []
    for n, f in enumerate(files):
        if n not in changed:
            out.append(f)
        elif changed[n]["record"] is not None:
            out.append(FileRecord(**changed[n]["record"]))
    return (out, sum(c["dropped"] for c in changed.values()),
            sum(c["heldout"] for c in changed.values()))
