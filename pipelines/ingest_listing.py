"""Ingest's listing and work items without per-file state in the driver (issue 16).

1. `write_listing`: the input is listed page by page (`storage.iter_files`, URI order)
   into Parquet parts (uri, size, mtime_ns, bad_id) while the listing digest, the count
   and the bytes are computed on the way; names that are not valid UTF-8 are escaped per
   entry (`escape_name`). The driver holds one part's entries at a time.
2. `work_items`: an engine exchange turns the parts into the stage's work items. map
   (per listing part): each file not yet read (the tokenizer sample) goes, with its
   prior id (a join with the prior version's files table on uri), to the partition of
   its listed size (> 0; an empty file to that of its URI). reduce (per partition): the
   partition's files are packed as `ingest_once.size_grouped_items` packs them (files of
   one listed size together, in URI order) and written as one Parquet file under the
   version's `_work/items/`, one row group per item; only the items' references (file,
   offset, length) come back. Files of one size share a partition, so byte-identical
   copies still travel in one item and are hashed side by side, decoded once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from loom.pipelines import ingest_once
from loom.pipelines.exchange import Exchange, KeyValues, from_ipc, to_ipc
from loom.pipelines.runner import Engine, EngineOptions, run_exchange
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import INGEST_WORK, SCHEMA_VERSION

PART_ROWS = 65536  # listing entries per part: what the driver holds at once
FILES_PER_PARTITION = 50_000  # the exchange's partitions: about this many files each
MAX_PARTITIONS = 64
MAX_ITEMS = 2048  # work items grow past `files_per_item` files to stay about this many
ITEM_BYTES = 64 << 20  # ... while their files' listed bytes stay within this
LISTING = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
                     ("bad_id", pa.string())])  # bad_id: a bad name's stand-in id, else null
_ROUTED = pa.schema([("uri", pa.string()), ("listed", pa.int64()),
                     ("prior_id", pa.string())])


@dataclasses.dataclass
class Listing:
    """A written listing: its parts, digest and totals, and its badly named files
    ({escaped uri: stand-in id}: exceptional, so kept here for their Rejected rows)."""

    dir: str
    parts: list[str]
    digest: str
    listed: int
    bytes_in: int
    bad_names: dict[str, str]

    def entries(self) -> Iterator[storage.FileEntry]:
        """The well-named files in URI order, one part read at a time."""
        for part in self.parts:
            t = storage.read_parquet([part], columns=["uri", "size", "mtime_ns", "bad_id"])
            t = t.filter(pc.is_null(t.column("bad_id")))
            for uri, size, mtime in zip(t.column("uri").to_pylist(),
                                        t.column("size").to_pylist(),
                                        t.column("mtime_ns").to_pylist(), strict=True):
                yield storage.FileEntry(uri, size, mtime)

    def move_to(self, folder: str) -> None:
        """Its parts moved under `folder` (the version's `_work`, once the digest names
        the version: a killed run's listing is then that version's work, not a stray)."""
        parts = []
        for part in self.parts:
            fs, src = storage.resolve(part)
            dst = storage.join(folder, part.rsplit("/", 1)[-1])
            fs.create_dir(storage.resolve(folder)[1], recursive=True)
            fs.move(src, storage.resolve(dst)[1])
            parts.append(dst)
        storage.delete(self.dir)
        self.dir, self.parts = folder, parts

    def delete(self) -> None:
        storage.delete(self.dir)


def escape_name(e: storage.FileEntry) -> tuple[storage.FileEntry, str | None]:
    """A name that is not valid UTF-8 escaped (\\xNN per undecodable byte), with the
    stand-in id its `bad_name` Rejected row carries; a valid one as it is, with None."""
    try:
        e.uri.encode("utf-8")
        return e, None
    except UnicodeEncodeError:
        raw = e.uri.encode("utf-8", "surrogateescape")
        e = dataclasses.replace(e, uri=raw.decode("utf-8", "backslashreplace"))
        return e, f"bad_name:{hashlib.sha256(raw).hexdigest()}"


def write_listing(input_uri: str, output_root: str) -> Listing:
    """The input's listing as Parquet parts under a run's own `.listing-*` folder of the
    output root: the version it belongs to is named by its digest, known only once the
    listing is done; the caller then moves it there (`Listing.move_to`) or deletes it."""
    folder = storage.join(output_root, f"{mf.LISTING_PREFIX}{uuid.uuid4().hex}")
    h, listed, bytes_in, parts, bad = hashlib.sha256(), 0, 0, [], {}
    page: list[storage.FileEntry] = []
    page_bad: list[str | None] = []

    def flush() -> None:
        uri = storage.join(folder, f"part-{len(parts):05d}.parquet")
        storage.write_parquet(pa.table([
            pa.array([e.uri for e in page], pa.string()),
            pa.array([e.size for e in page], pa.int64()),
            pa.array([e.mtime_ns for e in page], pa.int64()),
            pa.array(page_bad, pa.string())], schema=LISTING), uri)
        parts.append(uri)
        page.clear()
        page_bad.clear()

    try:
        for entry in storage.iter_files(input_uri):
            e, bad_id = escape_name(entry)
            h.update(mf.listing_line(e))
            listed += 1
            bytes_in += e.size
            if bad_id is not None:
                bad[e.uri] = bad_id
            page.append(e)
            page_bad.append(bad_id)
            if len(page) >= PART_ROWS:
                flush()
        if page:
            flush()
    except BaseException:
        storage.delete(folder)
        raise
    return Listing(folder, parts, mf.listing_name(h), listed, bytes_in, bad)


def prior_values(parts: Iterable[pa.Table], uris: pa.Array | pa.ChunkedArray,
                 column: str) -> pa.Array:
    """`column` of each of `uris` in a prior version's files table (null: not there), in
    the order of `uris`: a join on uri with the table's `parts`, one at a time."""
    wanted = pa.table({"uri": uris, "row": pa.array(range(len(uris)), pa.int64())})
    hits = [wanted.join(part, "uri", join_type="inner").select(["row", column])
            for part in parts]
    out = pa.nulls(len(uris), pa.string())
    hits = pa.concat_tables(hits) if hits else None
    if hits is not None and hits.num_rows:
        out = pc.replace_with_mask(
            out, pc.is_in(pa.array(range(len(uris)), pa.int64()),
                          value_set=hits.column("row")),
            hits.sort_by("row").column(column).combine_chunks())
    return out


class ItemSteps:
    """The exchange's steps (picklable): which files are skipped (read already), where
    the prior ids are, how work items are sized, and the version whose `_work` holds
    the item files."""

    def __init__(self, version_dir: str, partitions: int, per_item: int, skip: frozenset[str],
                 prior_files: tuple[str, ...], remote_sizes: bool, grow_to: int = 0,
                 grow_bytes: int = 0):
        self.version_dir, self.partitions, self.per_item = version_dir, partitions, per_item
        self.grow_to, self.grow_bytes = grow_to, grow_bytes
        self.skip, self.prior_files, self.remote_sizes = skip, prior_files, remote_sizes

    def _partition(self, key: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "big") \
            % self.partitions

    def map(self, item: dict) -> KeyValues:
        t = storage.read_parquet([item["file"]], columns=["uri", "size", "bad_id"])
        keep = pc.is_null(t.column("bad_id"))
        if self.skip:
            keep = pc.and_(keep, pc.invert(pc.is_in(
                t.column("uri"), value_set=pa.array(sorted(self.skip), pa.string()))))
        t = t.filter(keep)
        if not t.num_rows:
            return
        prior_id = self._prior_ids(t.column("uri"))
        uris, sizes = t.column("uri").to_pylist(), t.column("size").to_pylist()
        rows: dict[int, list[int]] = {}
        for i, (uri, size) in enumerate(zip(uris, sizes, strict=True)):
            key = str(size).encode() if size > 0 else b"\0" + uri.encode()
            rows.setdefault(self._partition(key), []).append(i)
        routed = pa.table([t.column("uri"), t.column("size"), prior_id], schema=_ROUTED)
        for p, idx in sorted(rows.items()):
            yield f"p{p:04d}", to_ipc(routed.take(pa.array(idx, pa.int64())))

    def _prior_ids(self, uris: pa.ChunkedArray) -> pa.Array:
        """Each file's id in the prior version (null: none)."""
        return prior_values((storage.read_parquet([f], columns=["uri", "id"])
                             for f in self.prior_files), uris, "id")

    def pack(self, key: str, values: list[bytes]) -> KeyValues:
        t = pa.concat_tables([from_ipc(v) for v in values]).sort_by("uri")
        listed = t.column("listed").to_pylist()
        rows = [{"uri": u, "size": s if self.remote_sizes else None, "prior_id": p}
                for u, s, p in zip(t.column("uri").to_pylist(), listed,
                                   t.column("prior_id").to_pylist(), strict=True)]
        items = ingest_once.size_grouped_items(
            rows, dict(zip(t.column("uri").to_pylist(), listed, strict=True)),
            self.per_item, prefix=f"part-{key[1:]}", grow_to=self.grow_to,
            grow_bytes=self.grow_bytes)
        del rows, t
        uri = storage.join(self.version_dir, "_work", "items", f"{key}.parquet")
        sink = pa.BufferOutputStream()
        schema = INGEST_WORK.with_metadata({b"loom.schema_version": str(SCHEMA_VERSION).encode()})
        refs, offset = [], 0
        with pq.ParquetWriter(sink, schema, compression="zstd") as out:
            for item in items:  # one row group per item: a task reads only its own
                out.write_table(pa.Table.from_pylist(item["rows"], schema=schema),
                                row_group_size=max(1, len(item["rows"])))
                refs.append({"name": item["name"], "file": uri, "offset": offset,
                             "length": len(item["rows"])})
                offset += len(item["rows"])
        storage.write_atomic(uri, sink.getvalue().to_pybytes(),
                             storage.join(self.version_dir, "_work", "tmp"))
        yield key, json.dumps(refs).encode()


def work_items(engine: Engine | EngineOptions, version_dir: str, listing: Listing,
               per_item: int, skip: set[str], prior_files: list[str], remote_sizes: bool
               ) -> list[dict]:
    """The stage's work items for the listing's well-named files not in `skip`, with
    their prior ids (from the `prior_files` parts of the version reused from): references
    to rows of `_work/items/` files, in name order. `remote_sizes`: the stage is given
    the listed sizes (an object store's are exact; a local file is sized by its read).

    Items hold `per_item` files, or more past `per_item * MAX_ITEMS` listed files: about
    MAX_ITEMS items in all, each of at most ITEM_BYTES listed bytes (a million small files
    make ~2,000 Examples parts, not ~16,000, and the driver, the engine and the bucket
    count items and parts by the thousand; large files keep `per_item` a piece)."""
    partitions = max(1, min(MAX_PARTITIONS, -(-listing.listed // FILES_PER_PARTITION)))
    steps = ItemSteps(version_dir, partitions, per_item, frozenset(skip), tuple(prior_files),
                      remote_sizes, -(-listing.listed // MAX_ITEMS), ITEM_BYTES)
    parts = [{"name": f"listing-{k:05d}", "file": f} for k, f in enumerate(listing.parts)]
    if len(parts) == 1:  # one part (at most PART_ROWS files): the same steps, here, with
        # no pipeline to start (its fixed cost dwarfs planning a small listing)
        done = [kv for key, value in steps.map(parts[0]) for kv in steps.pack(key, [value])]
    else:
        done = run_exchange(engine, Exchange(version_dir, steps.map, (steps.pack,),
                                             "ingest-items"), parts)
    items: list[dict] = []
    for _, value in done:
        items.extend(json.loads(value))
    return sorted(items, key=lambda i: i["name"])
