"""Shard pass 2: the global shuffle as a distributed sort on the hashed key, on the engine.

The order is today's: every copy of every joined row sorted by `(shuffle_key, joined
file, row)`, cut into shards of `rows_per_shard`. Keys are uniform hex hashes, so a
key's first 32 bits, shifted, range-partition the keys into B buckets (about four per
shard) whose order is the keys' order. Two exchanges over the joined files:

1. count: rows per bucket. The driver sums B counters; their prefix sums give each
   bucket's first position, hence the shards it spans.
2. pack: each row goes to every shard its bucket spans (most buckets lie in one shard;
   one straddling a boundary goes to both), so each shard's reducer holds whole buckets,
   ranks rows within them (position = bucket start + rank), keeps its own positions and
   writes its shard once.

The driver holds the plan and B counters; rows and keys stay on the workers, and only
the shards are written (no per-(file, shard) bucket files).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from loom.pipelines.exchange import Exchange, KeyValues, from_ipc, to_ipc
from loom.pipelines.runner import Engine, EngineOptions, run_exchange
from loom.schemas import storage
from loom.schemas.manifest import FileRecord, write_part
from loom.transforms.packing import repeats, shuffle_key

KEY_BITS = 32  # a bucket is a range of the key's first 8 hex digits
BUCKETS_PER_SHARD = 4
MAX_BITS = 20  # at most ~1M counters in the driver
CHUNK_BITS = 8  # counters come back 256 buckets to a value
EXTRA = ["_key", "_f", "_r", "_b"]


def bucket_bits(rows: int, rows_per_shard: int) -> int:
    want = BUCKETS_PER_SHARD * max(1, -(-rows // rows_per_shard))
    return min(MAX_BITS, (want - 1).bit_length())


def copies(table: pa.Table, seed: int, weights: dict[str, float]
           ) -> tuple[np.ndarray, list[str]]:
    """Every copy of every row: (its row, its shuffle key). Copy c > 0 of a pair is keyed
    `pid#c`, so copies spread over the shards."""
    ids, kinds = table.column("pair_id").to_pylist(), table.column("kind").to_pylist()
    mods = table.column("modality").to_pylist()
    rows, keys = [], []
    for r, (pid, kind, mod) in enumerate(zip(ids, kinds, mods, strict=True)):
        for c in range(repeats(weights, seed, pid, kind, mod) if weights else 1):
            rows.append(r)
            keys.append(shuffle_key(seed, pid if c == 0 else f"{pid}#{c}"))
    return np.array(rows, np.int64), keys


def buckets(keys: list[str], bits: int) -> np.ndarray:
    return np.array([int(k[:8], 16) >> (KEY_BITS - bits) for k in keys], np.int64)


def _key_columns(uri: str) -> pa.Table:
    return storage.read_parquet([uri], columns=["pair_id", "kind", "positive.modality"])


class CountSteps:
    def __init__(self, seed: int, weights: dict[str, float], bits: int):
        self.seed, self.weights, self.bits = seed, weights, bits

    def map(self, item: dict) -> KeyValues:
        _, keys = copies(_key_columns(item["file"]), self.seed, self.weights)
        counts = np.bincount(buckets(keys, self.bits), minlength=1 << self.bits)
        for chunk in np.unique(np.nonzero(counts)[0] >> CHUNK_BITS):
            lo = int(chunk) << CHUNK_BITS
            part = counts[lo:lo + (1 << CHUNK_BITS)]
            yield f"{chunk:06d}", json.dumps({lo + int(i): int(part[i])
                                              for i in np.nonzero(part)[0]}).encode()

    def total(self, key: str, values: list[bytes]) -> KeyValues:
        out: dict[str, int] = {}
        for v in values:
            for b, n in json.loads(v).items():
                out[b] = out.get(b, 0) + n
        yield key, json.dumps(out).encode()


class PackSteps:
    def __init__(self, version_dir: str, seed: int, weights: dict[str, float], bits: int,
                 counts: np.ndarray, rows_per_shard: int, metadata: dict[str, str] | None):
        self.version_dir, self.seed, self.weights, self.bits = version_dir, seed, weights, bits
        self.counts, self.starts = counts, np.cumsum(counts) - counts
        self.rps, self.total, self.metadata = rows_per_shard, int(counts.sum()), metadata

    def map(self, item: dict) -> KeyValues:
        """One joined file: each row copy to the shards its bucket spans."""
        data = storage.read_parquet([item["file"]])
        keyed = data.select(["pair_id", "kind"]).append_column(
            "modality", pc.struct_field(data.column("positive"), "modality"))
        rows, keys = copies(keyed, self.seed, self.weights)
        if not len(rows):
            return
        b = buckets(keys, self.bits)
        first = self.starts[b] // self.rps
        span = (self.starts[b] + self.counts[b] - 1) // self.rps - first + 1
        copy = np.repeat(np.arange(len(rows)), span)  # a copy per (row copy, shard)
        shard = first[copy] + np.arange(len(copy)) - np.repeat(np.cumsum(span) - span, span)
        out = data.take(rows[copy]).append_column("_key", pa.array(keys).take(copy)) \
            .append_column("_f", pa.array(np.full(len(copy), item["f"], np.int64))) \
            .append_column("_r", pa.array(rows[copy])).append_column("_b", pa.array(b[copy]))
        for s in np.unique(shard):
            yield f"{s:06d}", to_ipc(out.filter(pa.array(shard == s)))

    def write(self, key: str, values: list[bytes]) -> KeyValues:
        """One shard: whole buckets in key order, ranked, cut to this shard's positions."""
        s = int(key)
        data = pa.concat_tables([from_ipc(v) for v in values])
        data = data.take(pc.sort_indices(data, [("_key", "ascending"), ("_f", "ascending"),
                                                 ("_r", "ascending")]))
        b = data.column("_b").to_numpy()
        at = np.arange(len(b))
        run = np.maximum.accumulate(np.where(np.r_[True, b[1:] != b[:-1]], at, 0))
        pos = self.starts[b] + at - run
        mine = (pos >= s * self.rps) & (pos < (s + 1) * self.rps)
        rows = data.filter(pa.array(mine)).drop_columns(EXTRA)
        want = min(self.rps, self.total - s * self.rps)
        if rows.num_rows != want:
            raise RuntimeError(f"shard {s}: {rows.num_rows} rows where the counts give {want}")
        rec = write_part(self.version_dir, "shards", f"shard-{s:05d}", rows, self.metadata)
        yield key, json.dumps(rec.to_json()).encode()


def pack(engine: Engine | EngineOptions, version_dir: str, joined: list[str], joined_rows: int,
         rows_per_shard: int, seed: int, weights: dict[str, float],
         metadata: dict[str, str] | None = None) -> tuple[list[FileRecord], int]:
    """The shards of `joined` (their files, in order) and the number of rows written."""
    if not joined:
        return [], 0
    items = [{"name": f"joined-{f:05d}", "f": f, "file": uri} for f, uri in enumerate(joined)]
    bits = bucket_bits(joined_rows, rows_per_shard)
    count = CountSteps(seed, weights, bits)
    counts = np.zeros(1 << bits, np.int64)
    for _, value in run_exchange(engine, Exchange(version_dir, count.map, (count.total,),
                                                  "shard-count"), items):
        for b, n in json.loads(value).items():
            counts[int(b)] += n
    if not counts.sum():
        return [], 0
    steps = PackSteps(version_dir, seed, weights, bits, counts, rows_per_shard, metadata)
    written = run_exchange(engine, Exchange(version_dir, steps.map, (steps.write,), "shard-pack"),
                           items)
    return [FileRecord(**json.loads(v)) for _, v in written], steps.total
