"""Dataset versions: version ids, the manifest written last, and how readers find data.

Layout: `<root>/<version_id>/<table>/part-*.parquet` + `<root>/<version_id>/manifest.json`.
A version without a manifest does not exist for readers; the manifest is written
atomically after every file it lists. Work files live under `<version_id>/_work/` (parts
are staged in `_work/tmp/` and renamed into their table folder), so a table folder only
ever holds finished parts, whatever a killed run left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow as pa
from loom.schemas import lock, storage
from loom.schemas.records import KNOWN_SCHEMA_VERSIONS, SCHEMA_VERSION, TABLES, self_describing

PACKAGE_VERSION = "0.1.0"
MANIFEST = "manifest.json"
WORK = "_work"
LISTING_PREFIX = ".listing-"  # + a run's uuid hex: an ingest's listing, in its output root
# until the run knows its version and moves it into `<version>/_work/listing`

# Per-stage logic versions: bump a stage's constant when its output changes for the same
# inputs and config. Docs and refactors leave data valid.
STAGE_LOGIC = {
    "corpus": 1,
    "ingest": 6,  # 5: near_dup_group/near_dup_sig columns, codec by language id, geometry;
    # 6: near-dup buckets over ALL_PAIRS_MAX members joined through centres
    "synth": 3,  # 2: usage columns, filters, run-wide dedupe; 3: any-to-any pairs
    "relabel": 1,
    "shard": 2,  # 2: queries of any modality, with their task instruction
    "train": 2,
    "mine": 3,  # 2: quotas, cross-modal mix, rules, sampling, cache, histograms; 3: any-to-any
    "eval": 3,  # 2: R@k and NDCG@10 per Matryoshka size (by_dim); 3: any-to-any pairs
    "report": 1,
    "backfill": 1,
    "pairs": 1,
}


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def logic_version(stage: str) -> str:
    """Also names the schema version past 1, so a column change makes new version ids
    (version 1's ids predate schema versions and stay valid)."""
    schema = f"+schema.{SCHEMA_VERSION}" if SCHEMA_VERSION > 1 else ""
    return f"{PACKAGE_VERSION}+{stage}.{STAGE_LOGIC[stage]}{schema}"


class UnknownSchemaVersion(ValueError):
    """A dataset written with a schema version this loom does not know (CLI exit 2)."""


def check_schema_version(version_dir: str, manifest: Manifest) -> None:
    """Readers refuse a version they do not know; a known older one reads with today's
    schema (storage.read_parquet fills the columns it lacks with nulls)."""
    if manifest.schema_version not in KNOWN_SCHEMA_VERSIONS:
        raise UnknownSchemaVersion(
            f"{version_dir} has schema_version {manifest.schema_version}; this loom reads "
            f"{sorted(KNOWN_SCHEMA_VERSIONS)} (upgrade loom to read it)")


def version_id(stage: str, inputs: list[str], config: dict) -> str:
    """Hash of (input version ids or raw listing digest, stage config, stage logic)."""
    payload = canonical_json(
        {"stage": stage, "inputs": inputs, "config": config, "logic": logic_version(stage)}
    )
    return f"{stage}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def listing_digest(entries: Iterable[storage.FileEntry]) -> str:
    """A raw prefix's identity: every file's uri, size and mtime/generation."""
    h = hashlib.sha256()
    for e in entries:
        h.update(listing_line(e))
    return listing_name(h)


def listing_line(e: storage.FileEntry) -> bytes:
    """One file's share of `listing_digest` (fed to a sha256 in listing order)."""
    return f"{e.uri}\0{e.size}\0{e.mtime_ns}\n".encode()


def listing_name(h: hashlib._Hash) -> str:
    """`listing_digest` of the lines fed to `h`."""
    return f"raw-{h.hexdigest()[:16]}"


@dataclasses.dataclass
class FileRecord:
    path: str  # relative to the version folder
    rows: int
    sha256: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Manifest:
    stage: str
    version: str
    tables: dict[str, list[FileRecord]]
    counts: dict[str, int]
    config: dict
    lineage: dict
    created_at: str = ""
    logic_version: str = ""
    # manifests written before schema versions had version 1's columns
    schema_version: int = 1

    def to_json(self) -> str:
        body = dataclasses.asdict(self)
        return json.dumps(body, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        raw["tables"] = {k: [FileRecord(**f) for f in v] for k, v in raw["tables"].items()}
        return cls(**raw)

    def files(self, version_uri: str, table: str) -> list[str]:
        return [storage.join(version_uri, f.path) for f in self.tables.get(table, [])]

    def rows(self, table: str) -> int:
        return sum(f.rows for f in self.tables.get(table, []))


def version_uri(root: str, version: str) -> str:
    return storage.join(root, version)


def read_manifest(version_dir: str) -> Manifest | None:
    uri = storage.join(version_dir, MANIFEST)
    if not storage.exists(uri):
        return None
    return Manifest.from_json(storage.read_bytes(uri).decode())


def newest_version(root: str, accept: Callable[[Manifest], bool] = lambda m: True
                   ) -> tuple[str, Manifest] | None:
    """The newest complete version under root (by manifest time) that `accept` takes."""
    found = []
    for d in storage.list_dirs(root):
        m = read_manifest(d)
        if m is not None and accept(m):
            found.append((m.created_at, d, m))
    if not found:
        return None
    _, d, m = max(found, key=lambda t: (t[0], t[1]))
    return d, m


def resolve_input(uri: str) -> tuple[str, Manifest]:
    """A version folder as is, or a root's newest complete version (by manifest time)."""
    direct = read_manifest(uri)
    if direct is not None:
        check_schema_version(uri, direct)
        return uri, direct
    newest = newest_version(uri)
    if newest is None:
        raise FileNotFoundError(f"no complete dataset version under {uri}")
    check_schema_version(*newest)
    return newest


def read_table(version_dir: str, manifest: Manifest, table: str,
               columns: list[str] | None = None) -> pa.Table:
    """Only the files the manifest lists: stray parts of a killed run are invisible.
    Files of a known older schema version read with today's columns (added ones null)."""
    check_schema_version(version_dir, manifest)
    return _with_columns(storage.read_parquet(manifest.files(version_dir, table),
                                              columns=columns, schema=TABLES.get(table)),
                         table, columns)


def read_file(version_dir: str, manifest: Manifest, table: str, f: FileRecord,
              columns: list[str] | None = None) -> pa.Table:
    """`read_table` of one of the table's listed files alone."""
    return read_table(version_dir, dataclasses.replace(manifest, tables={table: [f]}), table,
                      columns)


def read_table_parts(version_dir: str, manifest: Manifest, table: str,
                     columns: list[str] | None = None) -> Iterator[pa.Table]:
    """`read_table`, one listed file at a time (memory holds one part)."""
    check_schema_version(version_dir, manifest)
    for uri in manifest.files(version_dir, table):
        yield _with_columns(storage.read_parquet([uri], columns=columns,
                                                 schema=TABLES.get(table)), table, columns)


def _with_columns(data: pa.Table, table: str, columns: list[str] | None) -> pa.Table:
    for field in TABLES.get(table) or []:
        if field.name not in data.column_names and (columns is None or field.name in columns):
            data = data.append_column(field.with_nullable(True),
                                      pa.nulls(data.num_rows, field.type))
    return data


def leftovers(version_dir: str) -> list[storage.FileEntry]:
    """What killed runs left in a version folder: temp files (anywhere, older names
    included) and the `_work/` folder."""
    work = storage.join(version_dir, WORK)
    return [e for e in storage.list_files(version_dir)
            if storage.is_tmp(e.uri.rsplit("/", 1)[-1]) or e.uri.startswith(work + "/")]


def sweep_tmp(version_dir: str) -> int:
    """Delete a killed run's temp files (the next run of a version calls this under the
    root's lock, so no live writer owns them). `_work/` stays: its parts are reused."""
    gone = 0
    for e in storage.list_files(version_dir):
        if storage.is_tmp(e.uri.rsplit("/", 1)[-1]):
            storage.delete(e.uri)
            gone += 1
    return gone


class VersionWriter:
    """Writes part files of one version and, last, its manifest.

    Made under the CLI's lock session it holds the root's lock (another writer of the
    root waits here, then finds its version committed), and clears the temp files a
    killed run of the same version left.
    """

    def __init__(self, root: str, stage: str, version: str):
        self.root, self.stage, self.version = root, stage, version
        self.dir = version_uri(root, version)
        held = lock.hold(root, f"{stage} {version}")
        if held is not None and read_manifest(self.dir) is None:
            sweep_tmp(self.dir)

    def existing(self) -> Manifest | None:
        return read_manifest(self.dir)

    def part_uri(self, table: str, name: str) -> str:
        return storage.join(self.dir, table, f"{name}.parquet")

    def write_part(self, table: str, name: str, data: pa.Table,
                   metadata: dict[str, str] | None = None) -> FileRecord:
        return write_part(self.dir, table, name, data, metadata)

    def commit(self, tables: dict[str, list[FileRecord]], counts: dict[str, int],
               config: dict, lineage: dict) -> Manifest:
        manifest = Manifest(
            stage=self.stage,
            version=self.version,
            tables={k: sorted(v, key=lambda f: f.path) for k, v in tables.items()},
            counts=counts,
            config=config,
            lineage=lineage,
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(),
            logic_version=logic_version(self.stage),
            schema_version=SCHEMA_VERSION,
        )
        storage.write_atomic(storage.join(self.dir, MANIFEST), manifest.to_json().encode())
        if not storage.is_remote(self.dir):  # the parts' staging folder, once empty
            with contextlib.suppress(OSError):
                os.removedirs(storage.join(self.dir, WORK, "tmp"))
        return manifest


def write_part(version_dir: str, table: str, name: str, data: pa.Table,
               metadata: dict[str, str] | None = None) -> FileRecord:
    """One Parquet part; the name is deterministic per input chunk, so a retry overwrites.
    It carries its table's column descriptions and the schema version (records.py);
    `metadata` joins the file's key-value metadata (shards carry their spec there)."""
    data = self_describing(data, table)
    if metadata:
        data = data.replace_schema_metadata((data.schema.metadata or {}) | metadata)
    sink = pa.BufferOutputStream()
    import pyarrow.parquet as pq

    pq.write_table(data, sink, compression="zstd")
    body = sink.getvalue().to_pybytes()
    rel = f"{table}/{name}.parquet"
    storage.write_atomic(storage.join(version_dir, rel), body,
                         tmp_dir=storage.join(version_dir, WORK, "tmp"))
    return FileRecord(path=rel, rows=data.num_rows, sha256=hashlib.sha256(body).hexdigest())
