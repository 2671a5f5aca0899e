"""The trainer's data plan: which shard rows each rank trains on at each step, from a seed.

A plan is a pure function of (shard files, world size, batch size, seed, epoch, batching),
so every rank computes the same one without talking to the others, and a resumed run
recomputes it and starts at the saved step: nothing skipped is read or collated again.

- Each epoch, the shard files are permuted with (seed, epoch) and dealt to ranks, largest
  first, each to the rank with the fewest rows so far; a rank reads only its own files.
- `mixed`: a rank's batches are consecutive rows of its files, in order (the position
  of a rank is then a shard index and a row offset).
- `aligned`: each step draws one bucket (task kind x positive modality by default) with
  the bucket weights, the same bucket on every rank, and each rank takes its next rows
  of that bucket (a bucket's rows are reshuffled, seeded, when exhausted: a bucket with a
  large weight is upsampled). A bucket that some rank holds fewer than a batch of joins
  the `mixed` remainder bucket, which is drawn like any other (by default in proportion to
  those rows; topped up from every bucket when it is itself short of a batch).
Every rank runs the same number of steps per epoch: the smallest rank's rows // batch.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from loom.schemas import storage

MIXED = "mixed"
Ref = tuple[int, int]  # (file index, row index in that file)


class Batching(str, enum.Enum):
    MIXED = "mixed"
    ALIGNED = "aligned"


BUCKET_FIELDS = {"kind": "kind", "modality": "positive.modality",
                 "query_modality": "query.modality"}


@dataclasses.dataclass(frozen=True)
class Step:
    bucket: str  # the bucket every rank drew, or "mixed"
    rows: list[list[Ref]]  # per rank


@dataclasses.dataclass(frozen=True)
class DataPlan:
    files: list[str]
    rows: list[int]  # rows per file
    world: int
    batch_size: int
    seed: int
    batching: Batching = Batching.MIXED
    bucket_by: tuple[str, ...] = ("kind", "modality")
    weights: dict[str, float] | None = None  # bucket name ("caption/image") -> weight

    def assign(self, epoch: int) -> list[list[int]]:
        """File indices per rank for `epoch`: a seeded permutation, dealt largest file first
        to the rank with the fewest rows, so the loads (and steps per epoch) are the same
        every epoch; each rank then reads its files in permuted order."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.files)).tolist()
        rank_of = {f: i for i, f in enumerate(perm)}
        ranks: list[list[int]] = [[] for _ in range(self.world)]
        load = [0] * self.world
        for f in sorted(perm, key=lambda f: (-self.rows[f], rank_of[f])):
            r = min(range(self.world), key=lambda k: (load[k], k))
            ranks[r].append(f)
            load[r] += self.rows[f]
        return [sorted(fs, key=rank_of.get) for fs in ranks]

    def steps_per_epoch(self) -> int:
        """The same on every epoch (see assign)."""
        loads = [sum(self.rows[f] for f in fs) for fs in self.assign(0)]
        return min(loads) // self.batch_size

    def epoch(self, epoch: int, keys: Callable[[int], list[str]] | None = None) -> list[Step]:
        """Every step of `epoch`; `keys(file)` gives each row's bucket (aligned only)."""
        ranks = self.assign(epoch)
        streams = [[(f, i) for f in fs for i in range(self.rows[f])] for fs in ranks]
        n = self.steps_per_epoch()
        b = self.batch_size
        if self.batching == Batching.MIXED:
            return [Step(MIXED, [s[k * b : (k + 1) * b] for s in streams]) for k in range(n)]
        return self._aligned(epoch, streams, n, keys or self.read_keys)

    def _aligned(self, epoch: int, streams: list[list[Ref]], n: int,
                 keys: Callable[[int], list[str]]) -> list[Step]:
        cache: dict[int, list[str]] = {}

        def key(ref: Ref) -> str:
            if ref[0] not in cache:
                cache[ref[0]] = keys(ref[0])
            return cache[ref[0]][ref[1]]

        per_rank = [collections.defaultdict(list) for _ in streams]
        for r, stream in enumerate(streams):
            for ref in stream:
                per_rank[r][key(ref)].append(ref)
        names = {k for d in per_rank for k in d}
        small = {k for k in names if any(len(d[k]) < self.batch_size for d in per_rank)}
        rest = [[ref for ref in s if key(ref) in small] for s in streams]
        short = any(len(x) < self.batch_size for x in rest)
        for r, d in enumerate(per_rank):  # too small somewhere: joins the mixed remainder
            for k in small:
                d.pop(k, None)
            if any(rest):  # a remainder short of a batch is topped up from the whole stream
                d[MIXED] = rest[r] + ([ref for ref in streams[r] if key(ref) not in small]
                                      if short else [])
        buckets = sorted({k for d in per_rank for k in d
                          if all(len(e.get(k, [])) >= self.batch_size for e in per_rank)})
        if not buckets:
            return [Step(MIXED, [s[k * self.batch_size : (k + 1) * self.batch_size]
                                 for s in streams]) for k in range(n)]
        sizes = np.array([sum(len(x) for x in rest) if k == MIXED else
                          sum(len(d[k]) for d in per_rank) for k in buckets], dtype=float)
        w = np.array([(self.weights or {}).get(k, 1.0) if self.weights else s
                      for k, s in zip(buckets, sizes, strict=True)], dtype=float)
        drawn = np.random.default_rng([self.seed, epoch, 1]).choice(len(buckets), n,
                                                                    p=w / w.sum())
        cursors = [{k: _Cycle(d[k], (self.seed, epoch, r, k)) for k in buckets}
                   for r, d in enumerate(per_rank)]
        return [Step(buckets[i], [c[buckets[i]].take(self.batch_size) for c in cursors])
                for i in drawn.tolist()]

    def read_keys(self, f: int) -> list[str]:
        """Each row's bucket name in file `f` (reads only the bucket columns)."""
        fs, path = storage.resolve(self.files[f])
        cols = [BUCKET_FIELDS[k] for k in self.bucket_by]
        t = pq.read_table(path, filesystem=fs, columns=cols)
        parts = [t.column(i).to_pylist() for i in range(t.num_columns)]
        return ["/".join(str(v) for v in row) for row in zip(*parts, strict=True)]

    def position(self, epoch: int, k: int, steps: list[Step]) -> dict:
        """The data position before step k of `epoch`: per rank, the shard and row offset
        of its next row (mixed batching reads each rank's files in order)."""
        out = {"epoch": epoch, "step_in_epoch": k}
        if k < len(steps):
            out["ranks"] = [{"shard": self.files[f], "row": i} for f, i in
                            (rows[0] for rows in steps[k].rows)]
        return out


class _Cycle:
    """A bucket's rows on one rank, taken in order, reshuffled (seeded) on each new pass."""

    def __init__(self, refs: list[Ref], seed: tuple):
        self.refs, self.pos, self.passes = list(refs), 0, 0
        digest = hashlib.blake2b(repr(seed).encode(), digest_size=8).digest()
        self.rng = np.random.default_rng(int.from_bytes(digest, "little"))

    def take(self, n: int) -> list[Ref]:
        if self.pos + n > len(self.refs):  # a new pass; a batch never repeats a row
            self.refs = [self.refs[i] for i in self.rng.permutation(len(self.refs))]
            self.pos, self.passes = 0, self.passes + 1
        out = self.refs[self.pos : self.pos + n]
        self.pos += n
        return out


class ShardReader:
    """Rows by (file, row), a few whole files kept in memory (a rank reads its own files
    again and again within an epoch, mostly in order)."""

    def __init__(self, files: list[str], keep: int = 4):
        self.files, self.keep = files, keep
        self.tables: collections.OrderedDict[int, pa.Table] = collections.OrderedDict()

    def table(self, f: int) -> pa.Table:
        if f in self.tables:
            self.tables.move_to_end(f)
        else:
            fs, path = storage.resolve(self.files[f])
            self.tables[f] = pq.read_table(path, filesystem=fs)
            while len(self.tables) > self.keep:
                self.tables.popitem(last=False)
        return self.tables[f]

    def rows(self, refs: list[Ref]) -> pa.Table:
        """The rows in the order given."""
        by_file: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
        for pos, (f, i) in enumerate(refs):
            by_file[f].append((pos, i))
        parts, positions = [], []
        for f, pairs in by_file.items():
            parts.append(self.table(f).take([i for _, i in pairs]))
            positions += [p for p, _ in pairs]
        return pa.concat_tables(parts).take(np.argsort(positions))


def iter_batches(steps: list[Step], rank: int, reader: ShardReader, collate,
                 prefetch: int = 2) -> Iterator:
    """Collated batches of this rank, read and collated `prefetch` steps ahead in a thread
    (JPEG decode and padding overlap the previous step's compute)."""
    if not steps:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="loom-train-data") as pool:
        pending = collections.deque()
        it = iter(steps)
        for step in it:
            pending.append(pool.submit(lambda s: collate(reader.rows(s.rows[rank])), step))
            if len(pending) > prefetch:
                break
        for step in it:
            yield pending.popleft().result()
            pending.append(pool.submit(lambda s: collate(reader.rows(s.rows[rank])), step))
        while pending:
            yield pending.popleft().result()
