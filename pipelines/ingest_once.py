"""Ingest reads every listed file once: the read that decodes also hashes.

Exact duplicates are found from those hashes. Files of the same listed size go to the
same work item, next to each other, so a copy is usually met in the batch of its
original: hashed, not decoded (a `copy`). Copies that land in other items (a size group
split over items, or sizes that differ on the listing, such as a symlink's) were decoded
there; `resolve` drops their rows afterwards from the parts that hold them and takes
their stats back, so the outcome tables are those of a hash-first ingest.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from loom.pipelines import ingest_listing
from loom.pipelines.exchange import (
    Exchange,
    KeyValues,
    buckets_of,
    from_ipc,
    run_here,
    to_ipc,
)
from loom.pipelines.runner import Engine, EngineOptions, run_exchange
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.manifest import FileRecord
from loom.schemas.records import DUPLICATE, FILES, INGEST_FILES, INGEST_FILES_TABLE
from loom.transforms.ingest import STORAGE_ERROR


def size_grouped_items(rows: list[dict], sizes: dict[str, int], per_item: int,
                       prefix: str = "part", grow_to: int = 0, grow_bytes: int = 0
                       ) -> list[dict]:
    """Inline work items of about `per_item` rows in URI order, except that files of one
    listed size (> 0) travel together: a group is kept whole in one item when it fits,
    its members in URI order, at the place of its first member.

    An item may take up to `grow_to` rows (> per_item) while its files' listed bytes stay
    within `grow_bytes`: a large listing of small files then makes fewer, larger items
    (and parts), and one of large files keeps its items at `per_item` files."""
    groups: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        if sizes.get(r["uri"], 0) > 0:
            groups[sizes[r["uri"]]].append(r)
    units, done = [], set()
    for r in sorted(rows, key=lambda r: r["uri"]):
        size = sizes.get(r["uri"], 0)
        if size > 0 and len(groups[size]) > 1:
            if size not in done:
                done.add(size)
                units.append(sorted(groups[size], key=lambda g: g["uri"]))
        else:
            units.append([r])

    def listed(rs: list[dict]) -> int:
        return sum(max(0, sizes.get(r["uri"], 0)) for r in rs)

    items: list[list[dict]] = [[]]
    held = 0  # the last item's listed bytes
    for unit in units:
        while unit:
            n, limit = len(items[-1]), per_item
            if grow_to > per_item and held + listed(unit[: grow_to - n]) <= grow_bytes:
                limit = grow_to
            if n and n + len(unit) > limit:
                items.append([])
                held = 0
                continue
            take = unit[: limit - n]
            items[-1].extend(take)
            held += listed(take)
            unit = unit[len(take):]
    return [{"name": f"{prefix}-{i:05d}", "rows": rows_}
            for i, rows_ in enumerate(items) if rows_]


FILES_PER_BUCKET = 50_000  # the resolve exchange's buckets: about this many files each
MAX_BUCKETS = 64
LOCAL_MAX_FILES = 4096  # at most this many files: the same steps in the driver (bounded)
_ROUTED = pa.schema([  # one listed file on its way to its content id's bucket
    ("uri", pa.string()), ("id", pa.string()), ("size", pa.int64()), ("state", pa.string()),
    ("copies", pa.list_(pa.string())), ("stats", pa.string()), ("part", pa.int64()),
    ("ex_start", pa.int64()), ("examples", pa.int64()), ("rej_start", pa.int64()),
    ("rejected", pa.int64())])
_EDITS = pa.schema([  # what a part loses (drop) or re-sources (fix), as spans of its rows
    ("kind", pa.string()), ("ex_start", pa.int64()), ("examples", pa.int64()),
    ("rej_start", pa.int64()), ("rejected", pa.int64()), ("uri", pa.string()),
    ("copies", pa.list_(pa.string()))])


@dataclasses.dataclass
class Resolved:
    """What the driver keeps of the resolution: counters and the parts written, no rows.
    `reused` counts the canonicals a prior version holds (none on a first ingest);
    `reused_parts` name them with their copies (`_work/reused` parts, a bucket each):
    what `copy_reused` copies from that version."""

    files: list[FileRecord]
    duplicates: list[FileRecord]
    decoded: int
    reused: int
    reused_parts: list[str]
    storage_errors: int
    storage_example: str | None


def _starts(counts: pa.ChunkedArray) -> pa.Array:
    c = counts.to_numpy()
    return pa.array(np.cumsum(c) - c, pa.int64())


class ResolveSteps:
    """Exact duplicates over every listed file, on the engine (issue 16: the driver holds
    no per-file rows). Three steps over the stage's `_work/files` parts:

    1. map, per part: its files' rows, with where each file's rows sit in the part's
       Examples and Rejected (spans: rows are in file order), to the bucket of its id;
    2. per bucket: every copy of a content lies in its id's bucket, so the smallest URI
       is known there (canonical; empty files always are: each is rejected). The bucket
       writes its DUPLICATE rows and its FILES rows (URI order), sends each part the spans
       it loses (a decoded duplicate) or re-sources (a canonical whose item named other
       copies than it has), and a summary (stats to take back, counters);
    3. per part with edits: its Examples and Rejected rewritten under their own names
       (deleted if emptied); the summaries pass through.
    """

    def __init__(self, version_dir: str, paths: list[str], buckets: int,
                 prior_files: tuple[str, ...], bad_names: frozenset[str]):
        self.version_dir, self.paths, self.buckets = version_dir, paths, buckets
        self.prior_files, self.bad_names = prior_files, bad_names

    def _name(self, k: int) -> str:
        return self.paths[k].rsplit("/", 1)[-1].removesuffix(".parquet")

    def map(self, item: dict) -> KeyValues:
        k = item["part"]
        t = storage.read_parquet([storage.join(self.version_dir, self.paths[k])],
                                 schema=INGEST_FILES)
        if not t.num_rows:
            return
        rows = pa.table({
            **{c: t.column(c) for c in ("uri", "id", "size", "state", "copies", "stats")},
            "part": pa.array(np.full(t.num_rows, k, np.int64)),
            "ex_start": _starts(t.column("examples")), "examples": t.column("examples"),
            "rej_start": _starts(t.column("rejected")), "rejected": t.column("rejected")},
            schema=_ROUTED)
        b = buckets_of(t.column("id").to_pylist(), self.buckets)
        for n in np.unique(b):
            yield f"b{n:04d}", to_ipc(rows.filter(pa.array(b == n)))

    def resolve(self, key: str, values: list[bytes]) -> KeyValues:
        rows = pa.concat_tables([from_ipc(v) for v in values]).combine_chunks()
        rows = rows.take(pc.sort_indices(rows, [("id", "ascending"), ("uri", "ascending")]))
        n = rows.num_rows
        ids = rows.column("id").combine_chunks()
        sized = pc.greater(rows.column("size"), 0).to_numpy(zero_copy_only=False)
        same = np.zeros(n, dtype=bool)  # the same id as the row before (sorted by id, uri)
        if n > 1:
            same[1:] = pc.equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        first = sized & ~(same & np.concatenate([[False], sized[:-1]]))
        copy = sized & ~first
        canonical = ~copy
        # each copy's canonical: the last first-of-its-id row at or before it
        first_at = np.flatnonzero(first)
        owner = first_at[np.searchsorted(first_at, np.flatnonzero(copy), side="right") - 1]
        uris = rows.column("uri").to_pylist()
        dups: dict[str, list[str]] = {}
        for o, c in zip(owner.tolist(), np.flatnonzero(copy).tolist(), strict=True):
            dups.setdefault(uris[o], []).append(uris[c])  # URIs ascend within an id
        summary: dict = {"stats": {}, "decoded": 0, "reused": 0, "reused_part": None,
                         "storage_errors": 0, "storage_example": None,
                         "files": None, "duplicates": None}
        if copy.any():
            dup_rows = rows.filter(pa.array(copy)).sort_by("uri")
            summary["duplicates"] = mf.write_part(
                self.version_dir, "duplicates", f"part-{key[1:]}", pa.Table.from_arrays(
                    [dup_rows.column("uri"), dup_rows.column("id")], schema=DUPLICATE)
            ).to_json()
        state = rows.column("state").to_pylist()
        stats_json = rows.column("stats").to_pylist()
        copies = rows.column("copies").to_pylist()
        edits: dict[int, list[dict]] = defaultdict(list)
        col = {c: rows.column(c).to_pylist()
               for c in ("part", "ex_start", "examples", "rej_start", "rejected")}
        parsed: dict[str, dict] = {}
        rejected = np.zeros(n, dtype=bool)
        for i in range(n):
            if state[i] != "decoded":
                continue
            st = parsed.get(stats_json[i]) or parsed.setdefault(stats_json[i],
                                                                 json.loads(stats_json[i]))
            span = {c: col[c][i] for c in ("ex_start", "examples", "rej_start", "rejected")}
            if copy[i]:  # decoded in another item than its canonical's: rows go
                edits[col["part"][i]].append({"kind": "drop", **span})
                for s, v in st.items():
                    summary["stats"][s] = summary["stats"].get(s, 0) - v
                continue
            rejected[i] = bool(st.get("rejected_files"))
            if copies[i] != dups.get(uris[i], []):
                edits[col["part"][i]].append({"kind": "fix", **span, "uri": uris[i],
                                              "copies": dups.get(uris[i], [])})
        is_reused = canonical & pc.equal(rows.column("state"), "reused").to_numpy(
            zero_copy_only=False) if n else np.zeros(0, dtype=bool)
        was = self._reused(key, uris, is_reused, dups, summary)
        keep = canonical & pc.is_in(rows.column("state"), value_set=pa.array(
            ["decoded", "reused"])).to_numpy(zero_copy_only=False)
        summary["decoded"] = int((canonical & (np.array(state) == "decoded")).sum()) if n else 0
        errors = pc.starts_with(ids, STORAGE_ERROR).to_numpy(zero_copy_only=False)
        if errors.any():
            summary["storage_errors"] = int(errors.sum())
            summary["storage_example"] = uris[int(np.flatnonzero(errors)[0])]
        if self.bad_names:  # a bad name's escaped URI wins over a listed file of that name
            keep &= ~pc.is_in(rows.column("uri"), value_set=pa.array(
                sorted(self.bad_names), pa.string())).to_numpy(zero_copy_only=False)
        if keep.any():
            summary["files"] = self._files_part(key, rows, keep, rejected, is_reused,
                                                was).to_json()
        for part, e in sorted(edits.items()):
            yield f"p{part:06d}", to_ipc(pa.Table.from_pylist(e, schema=_EDITS))
        yield f"s{key[1:]}", json.dumps(summary, sort_keys=True).encode()

    def _reused(self, key: str, uris: list[str], is_reused: np.ndarray,
                dups: dict[str, list[str]], summary: dict) -> pa.Array | None:
        """The bucket's reused canonicals (those a prior version holds): written with their
        copies as a `_work/reused` part for `copy_reused`, their prior outcomes counted
        (and returned, in row order: FILES keeps them)."""
        if not self.prior_files or not is_reused.any():
            return None
        names = pa.array([uris[i] for i in np.flatnonzero(is_reused).tolist()], pa.string())
        part = storage.join(self.version_dir, "_work", "reused", f"part-{key[1:]}.parquet")
        storage.write_parquet(pa.table({"uri": names, "copies": pa.array(
            [dups.get(u, []) for u in names.to_pylist()], pa.list_(pa.string()))}), part)
        was = ingest_listing.prior_values(
            (storage.read_parquet([f], columns=["uri", "outcome"]) for f in self.prior_files),
            names, "outcome")
        accepted = pc.sum(pc.equal(was, "accepted")).as_py() or 0
        for name, v in (("accepted_files", accepted),
                        ("rejected_files", len(was) - was.null_count - accepted)):
            summary["stats"][name] = summary["stats"].get(name, 0) + v
        summary["reused"], summary["reused_part"] = len(names), part
        return was

    def _files_part(self, key: str, rows: pa.Table, keep: np.ndarray, rejected: np.ndarray,
                    is_reused: np.ndarray, was: pa.Array | None) -> FileRecord:
        """FILES for the bucket's canonicals, in URI order: a decoded one is rejected iff
        its stage rejected the file, a reused one keeps its prior outcome (`was`, over
        the `is_reused` rows)."""
        t = rows.filter(pa.array(keep))
        outcome = pa.array(np.where(rejected[keep], "rejected", "accepted"), pa.string())
        if was is not None and (kept := is_reused[keep]).any():
            outcome = pc.replace_with_mask(outcome, pa.array(kept),
                                           was.filter(pa.array(keep[is_reused])))
        files = pa.Table.from_arrays([t.column("uri"), t.column("id"), outcome],
                                     schema=FILES).sort_by("uri")
        return mf.write_part(self.version_dir, "files", f"part-{key[1:]}", files)

    def rewrite(self, key: str, values: list[bytes]) -> KeyValues:
        if key.startswith("s"):  # a bucket's summary: on to the driver
            yield key, values[0]
            return
        k = int(key[1:])
        edits = pa.concat_tables([from_ipc(v) for v in values]).to_pylist()
        out = {}
        for table, start, count in (("examples", "ex_start", "examples"),
                                    ("rejected", "rej_start", "rejected")):
            gone = [(e[start], e[start] + e[count]) for e in edits
                    if e["kind"] == "drop" and e[count]]
            fixes = [((e[start], e[start] + e[count]), e["uri"], e["copies"]) for e in edits
                     if e["kind"] == "fix" and e[count] and table == "examples"]
            if gone or fixes:
                out[table] = self._rewrite_part(table, self._name(k), gone, fixes)
        yield key, json.dumps(out).encode()

    def _rewrite_part(self, table: str, part: str, gone: list[tuple[int, int]],
                      fixes: list[tuple[tuple[int, int], str, list[str]]]) -> dict | None:
        """The part without the rows of `gone`, its `fixes` canonicals' Examples naming
        their copies: its new record (None: deleted, emptied)."""
        uri = storage.join(self.version_dir, f"{table}/{part}.parquet")
        data = storage.read_parquet([uri])
        if fixes:
            sources = data.column("source_uris").to_pylist()
            for (a, b), canon, dups in fixes:
                for i in range(a, b):
                    if sources[i] and sources[i][0] == canon:
                        sources[i] = [canon, *dups]
            idx = data.schema.get_field_index("source_uris")
            data = data.set_column(idx, data.schema.field(idx),
                                   pa.array(sources, data.schema.field(idx).type))
        if gone:
            keep = np.ones(data.num_rows, dtype=bool)
            for a, b in gone:
                keep[a:b] = False
            data = data.filter(pa.array(keep))
        if not data.num_rows:
            storage.delete(uri)
            return None
        return mf.write_part(self.version_dir, table, part, data).to_json()


def resolve(engine: Engine | EngineOptions, writer: mf.VersionWriter,
            tables: dict[str, list[FileRecord]], stats: dict[str, int],
            prior_files: list[str], bad_names: set[str]) -> Resolved:
    """Per content id the smallest URI is canonical, the rest duplicates (empty files
    never: each is rejected); rows a duplicate's decode left in its item are dropped and
    its stats taken back; each decoded canonical's Examples name all its copies. On the
    engine (`ResolveSteps`): the driver gets the parts written and counters back."""
    records = pop_files_records(tables)
    listed = sum(r.rows for r in records)
    buckets = max(1, min(MAX_BUCKETS, -(-listed // FILES_PER_BUCKET)))
    steps = ResolveSteps(writer.dir, [r.path for r in records], buckets, tuple(prior_files),
                         frozenset(bad_names))
    items = [{"name": f"files-{k:05d}", "part": k} for k in range(len(records))]
    got = Resolved([], [], 0, 0, [], 0, None)
    where = {t: {f.path: n for n, f in enumerate(tables.get(t, []))}
             for t in ("examples", "rejected")}
    gone: set[tuple[str, int]] = set()
    exchange = Exchange(writer.dir, steps.map, (steps.resolve, steps.rewrite), "ingest-resolve")
    run = run_exchange if listed > LOCAL_MAX_FILES else lambda _, *a: run_here(*a)
    for key, value in run(engine, exchange, items):
        out = json.loads(value)
        if key.startswith("p"):  # a part's new records (None: deleted)
            name = steps._name(int(key[1:]))
            for table, rec in out.items():
                n = where[table][f"{table}/{name}.parquet"]
                if rec is None:
                    gone.add((table, n))
                else:
                    tables[table][n] = FileRecord(**rec)
            continue
        for s, v in out["stats"].items():
            stats[s] = stats.get(s, 0) + v
        got.decoded += out["decoded"]
        got.reused += out["reused"]
        if out["reused_part"]:
            got.reused_parts.append(out["reused_part"])
        got.storage_errors += out["storage_errors"]
        if got.storage_example is None:
            got.storage_example = out["storage_example"]
        for table, rec in (("files", out["files"]), ("duplicates", out["duplicates"])):
            if rec is not None:
                getattr(got, table).append(FileRecord(**rec))
    for table in ("examples", "rejected"):
        tables[table] = [f for n, f in enumerate(tables.get(table, []))
                         if (table, n) not in gone]
    return got


def pop_files_records(tables: dict[str, list[FileRecord]]) -> list[FileRecord]:
    """The stage's `_work/files` parts: work data, never part of the version."""
    return tables.pop(INGEST_FILES_TABLE, [])


def base_uri(uri: str, listed: set[str]) -> str:
    """The listed file a row came from: `manifest.jsonl#3` -> `manifest.jsonl`, and
    `shard.tar#dir/0001.jpg` -> `shard.tar` (a listed name may itself hold a `#`)."""
    if uri in listed:
        return uri
    at = uri.find("#")
    while at != -1:
        if uri[:at] in listed:
            return uri[:at]
        at = uri.find("#", at + 1)
    return uri


def _stem(uris: list[str]) -> list[str]:
    """What routes a URI: its text before the first `#`, the same for a listed file and
    every row it gave (a member's URI extends its file's), whichever `#` ends the file."""
    return [u.split("#", 1)[0] for u in uris]


_ROW_REFS = pa.schema([("table", pa.string()), ("part", pa.int64()), ("row", pa.int64()),
                       ("key", pa.string())])
_KEEP = pa.schema([("row", pa.int64()), ("copies", pa.list_(pa.string())),
                   ("member", pa.bool_())])


class CopySteps:
    """A re-ingest copies the rows of unchanged files from the prior version, on the
    engine (issue 16: the driver holds no per-file rows). Three steps:

    1. map: a `_work/reused` part (reused canonicals and their copies now) or one prior
       Examples / Rejected part (each row's file URI, no other column) to the bucket of
       each URI's stem (`_stem`);
    2. per bucket: which prior rows come from a reused file (`base_uri`), each sent to its
       part with the copies its Example names now (a file's own row names them all);
    3. per prior part: its kept rows written as `reused-NNNNN`, their counts per
       modality / reason and rejected records returned.
    """

    def __init__(self, version_dir: str, prior: tuple[str, mf.Manifest], buckets: int):
        self.version_dir, (self.prior_dir, self.prior) = version_dir, prior
        self.buckets = buckets

    def _prior_part(self, table: str, k: int, columns: list[str] | None = None) -> pa.Table:
        """One prior part as `mf.read_table` reads it (an older schema with today's
        columns)."""
        return mf.read_file(self.prior_dir, self.prior, table, self.prior.tables[table][k],
                            columns)

    def map(self, item: dict) -> KeyValues:
        if "reused" in item:
            out = storage.read_parquet([item["reused"]])
            keys = out.column("uri").to_pylist()
        else:
            table, k = item["table"], item["part"]
            column = "source_uris" if table == "examples" else "uri"
            col = self._prior_part(table, k, [column]).column(column)
            keys = ([s[0] if s else "" for s in col.to_pylist()] if table == "examples"
                    else [u or "" for u in col.to_pylist()])
            out = pa.Table.from_arrays(
                [pa.array([table] * len(keys), pa.string()),
                 pa.array(np.full(len(keys), k, np.int64)),
                 pa.array(np.arange(len(keys), dtype=np.int64)), pa.array(keys, pa.string())],
                schema=_ROW_REFS)
        if not keys:
            return
        b = buckets_of(_stem(keys), self.buckets)
        for n in np.unique(b):
            yield f"b{n:04d}", to_ipc(out.filter(pa.array(b == n)))

    def select(self, key: str, values: list[bytes]) -> KeyValues:
        tables = [from_ipc(v) for v in values]
        reused = [t for t in tables if "copies" in t.column_names]
        refs = [t for t in tables if "copies" not in t.column_names]
        if not reused or not refs:
            return
        r = pa.concat_tables(reused)
        names = r.column("uri").to_pylist()
        copies = dict(zip(names, r.column("copies").to_pylist(), strict=True))
        listed = set(names)
        refs_t = pa.concat_tables(refs)
        by_part: dict[tuple[str, int], list[tuple[int, list[str] | None, bool]]] = defaultdict(list)
        for table, part, row, k in zip(*(refs_t.column(c).to_pylist() for c in _ROW_REFS.names),
                                       strict=True):
            base = base_uri(k, listed)
            if base in listed:
                member = base != k
                by_part[(table, part)].append((row, None if member else copies[k], member))
        for (table, part), rows in sorted(by_part.items()):
            yield f"p{table[0]}{part:06d}", to_ipc(pa.Table.from_arrays(
                [pa.array([x[0] for x in rows], pa.int64()),
                 pa.array([x[1] for x in rows], pa.list_(pa.string())),
                 pa.array([x[2] for x in rows], pa.bool_())], schema=_KEEP))

    def write(self, key: str, values: list[bytes]) -> KeyValues:
        table = "examples" if key[1] == "e" else "rejected"
        k = int(key[2:])
        keep = pa.concat_tables([from_ipc(v) for v in values]).sort_by("row")
        part = self._prior_part(table, k).take(keep.column("row"))
        by = "modality" if table == "examples" else "reason"
        stats = {f"{table}.{vc['values']}": vc["counts"]
                 for vc in pc.value_counts(part.column(by)).to_pylist()}
        if table == "rejected":
            stats["rejected_records"] = pc.sum(keep.column("member")).as_py() or 0
        else:  # copies may have come or gone since: a file's own row names them as now
            sources = part.column("source_uris").to_pylist()
            for i, (own, dups) in enumerate(zip(pc.invert(keep.column("member")).to_pylist(),
                                                keep.column("copies").to_pylist(), strict=True)):
                if own:
                    sources[i] = [sources[i][0], *dups]
            idx = part.schema.get_field_index("source_uris")
            part = part.set_column(idx, part.schema.field(idx),
                                   pa.array(sources, part.schema.field(idx).type))
        rec = mf.write_part(self.version_dir, table, f"reused-{k:05d}", part)
        yield key, json.dumps({"table": table, "record": rec.to_json(), "stats": stats}).encode()


def copy_reused(engine: Engine | EngineOptions, writer: mf.VersionWriter,
                prior: tuple[str, mf.Manifest], got: Resolved,
                tables: dict[str, list[FileRecord]], stats: dict[str, int]) -> None:
    """Rows of unchanged files are copied from the prior version, not decoded again
    (`CopySteps`): each prior part's kept rows into a part of its own. Below
    LOCAL_MAX_FILES reused files the same steps run in the driver."""
    buckets = max(1, min(MAX_BUCKETS, -(-got.reused // FILES_PER_BUCKET)))
    steps = CopySteps(writer.dir, prior, buckets)
    items = [{"name": f"reused-{n:05d}", "reused": p} for n, p in enumerate(got.reused_parts)]
    items += [{"name": f"prior-{t}-{k:05d}", "table": t, "part": k}
              for t in ("examples", "rejected") for k in range(len(prior[1].tables.get(t, [])))]
    exchange = Exchange(writer.dir, steps.map, (steps.select, steps.write), "ingest-reuse")
    run = run_exchange if got.reused > LOCAL_MAX_FILES else lambda _, *a: run_here(*a)
    for _, value in run(engine, exchange, items):
        out = json.loads(value)
        tables.setdefault(out["table"], []).append(FileRecord(**out["record"]))
        for s, v in out["stats"].items():
            stats[s] = stats.get(s, 0) + v
