"""One storage interface for local folders and gs:// buckets (pyarrow.fs underneath).

`STORAGE_EMULATOR_HOST` (the variable google-cloud-storage reads) points gs:// at an
emulator, as in tests; otherwise GCS uses Application Default Credentials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import os
import posixpath
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from loom.schemas.records import SCHEMA_VERSION


@dataclasses.dataclass(frozen=True, slots=True)
class FileEntry:  # slots: a listing holds one per file
    uri: str
    size: int
    mtime_ns: int


def is_remote(uri: str) -> bool:
    return uri.startswith("gs://")


@functools.lru_cache(maxsize=8)
def _gcs(emulator: str | None) -> pafs.FileSystem:
    if emulator:
        parsed = urlparse(emulator if "://" in emulator else f"http://{emulator}")
        return pafs.GcsFileSystem(
            anonymous=True,
            endpoint_override=parsed.netloc,
            scheme=parsed.scheme or "http",
            retry_time_limit=__import__("datetime").timedelta(seconds=10),
        )
    return pafs.GcsFileSystem()


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path, file:// or gs:// URI."""
    if uri.startswith("gs://"):
        return _gcs(os.environ.get("STORAGE_EMULATOR_HOST")), uri[len("gs://") :]
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise ValueError(f"unsupported storage scheme in {uri!r} (use a local path or gs://)")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def absolute(uri: str) -> str:
    """Local paths made absolute: Ray and Beam workers do not share the driver's cwd."""
    if is_remote(uri):
        return uri
    return os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else uri)


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def _uri(template: str, path: str) -> str:
    return f"gs://{path}" if is_remote(template) else path


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _list_local(path: str, suffix: str) -> list[FileEntry]:
    """A local tree walked without following symlinks: a link to a folder is never entered
    (two links to a parent would list 2^depth copies), but every link, fifo or device is
    listed like a file, so ingest accounts for it (and refuses what it may not read)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in filenames + links:
            full = os.path.join(dirpath, name)
            if full.endswith(suffix):
                st = os.lstat(full)
                out.append(FileEntry(full, int(st.st_size), int(st.st_mtime_ns)))
    return out


def list_files(prefix: str, suffix: str = "") -> list[FileEntry]:
    """Every file under a prefix, sorted by URI (deterministic listings make version ids)."""
    fs, path = resolve(prefix)
    if not is_remote(prefix) and os.path.isdir(path):
        return sorted(_list_local(path, suffix), key=lambda e: e.uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type == pafs.FileType.File:
        infos = [info]
    else:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    out = [
        FileEntry(_uri(prefix, i.path), int(i.size or 0), int(i.mtime_ns or 0))
        for i in infos
        if i.type == pafs.FileType.File and i.path.endswith(suffix)
    ]
    return sorted(out, key=lambda e: e.uri)


def _walk_sorted(path: str, suffix: str) -> Iterator[FileEntry]:
    """`_list_local`'s files in `list_files` order without holding the tree: a folder's
    entries sorted with each subfolder keyed `name/` (a child's path `d/...` compares to
    a sibling file's as `d/` does, since no file name holds a `/`), so walking them in
    that order yields full paths in sorted order. Memory: the folders open on the path."""
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except OSError:  # os.walk's default: an unreadable folder is skipped
        return
    keyed = []
    for e in entries:
        try:
            is_dir = e.is_dir()
        except OSError:
            is_dir = False
        walk = is_dir and not os.path.islink(e.path)  # a link to a folder: listed, not entered
        keyed.append((e.name + "/" if walk else e.name, e.path, walk))
    del entries
    keyed.sort()
    for _, full, walk in keyed:
        if walk:
            yield from _walk_sorted(full, suffix)
        elif full.endswith(suffix):
            st = os.lstat(full)
            yield FileEntry(full, int(st.st_size), int(st.st_mtime_ns))


def iter_files(prefix: str, suffix: str = "") -> Iterator[FileEntry]:
    """`list_files`, yielded in the same (URI) order without holding the listing: a local
    folder walked in sorted order, a gs:// prefix read page by page from GCS (which lists
    object names in UTF-8 byte order, the order of the code points that `sorted` uses)."""
    fs, path = resolve(prefix)
    if not is_remote(prefix) and os.path.isdir(path):
        yield from _walk_sorted(path, suffix)
        return
    if is_remote(prefix):
        bucket, _, key = prefix[len("gs://"):].partition("/")
        key = key.strip("/")
        blobs = _gcs_client(os.environ.get("STORAGE_EMULATOR_HOST")).list_blobs(
            bucket, prefix=f"{key}/" if key else None)
        found = False
        for page in blobs.pages:
            for b in page:
                if b.name.endswith("/") or not b.name.endswith(suffix):
                    continue  # a "folder" marker: pyarrow lists it as a directory
                found = True
                updated = b.updated - _EPOCH  # exact: pyarrow's mtime is microseconds too
                yield FileEntry(f"gs://{bucket}/{b.name}", int(b.size or 0),
                                (updated // dt.timedelta(microseconds=1)) * 1000)
        if found or not key:
            return
    yield from list_files(prefix, suffix)  # a single file, or nothing


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@functools.lru_cache(maxsize=8)
def _gcs_client(emulator: str | None):
    """The official client: it lists "folders" by delimiter, which pyarrow cannot."""
    from google.cloud import storage as gcs

    if emulator:
        from google.auth.credentials import AnonymousCredentials

        endpoint = emulator if "://" in emulator else f"http://{emulator}"
        return gcs.Client(project="_", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": endpoint})
    return gcs.Client()


def list_dirs(prefix: str) -> list[str]:
    if is_remote(prefix):
        bucket, _, key = prefix[len("gs://"):].partition("/")
        key = key.strip("/")
        it = _gcs_client(os.environ.get("STORAGE_EMULATOR_HOST")).list_blobs(
            bucket, prefix=f"{key}/" if key else None, delimiter="/")
        for _ in it.pages:  # prefixes fill in as pages are read
            pass
        return sorted(f"gs://{bucket}/{p.rstrip('/')}" for p in it.prefixes)
    fs, path = resolve(prefix)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(_uri(prefix, i.path) for i in infos if i.type == pafs.FileType.Directory)


def read_bytes(uri: str, limit: int | None = None) -> bytes:
    """The stored bytes, as they are: never decompressed because of the name (pyarrow
    would inflate a `*.gz` by default, unbounded: a bomb, and not the bytes hashed)."""
    if not is_remote(uri) and "://" not in uri.removeprefix("file://"):
        # Local: a plain read (pyarrow's resolve + stream cost ~0.15 ms a file).
        with open(uri.removeprefix("file://"), "rb") as f:
            return f.read() if limit is None else _read_local(f, limit)
    fs, path = resolve(uri)
    with fs.open_input_stream(path, compression=None) as f:
        return f.read(limit) if limit is not None else f.read()


def _read_local(f, limit: int) -> bytes:
    """At most `limit` bytes of an open local file. `f.read(limit)` allocates `limit`
    bytes up front (ingest's cap: 256 MiB a file, mapped and unmapped per read), so
    the read asks for the size fstat gives + 1, and reads on only when the file
    turns out longer than that (grown since, or a size-less special file)."""
    want = min(limit, os.fstat(f.fileno()).st_size + 1)
    data = f.read(want)
    if len(data) == want and want < limit:
        data += f.read(limit - want)
    return data


def iter_chunks(uri: str, chunk_bytes: int = 1 << 20):
    """The stored bytes in chunks, so a huge file is hashed without being held."""
    fs, path = resolve(uri)
    with fs.open_input_stream(path, compression=None) as f:
        while chunk := f.read(chunk_bytes):
            yield chunk


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    parent = posixpath.dirname(path) if is_remote(uri) else os.path.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path, compression=None) as f:
        f.write(data)


TMP_MARK = ".tmp-"


def tmp_name(name: str) -> str:
    """A temporary name readers skip: Arrow, pandas, HF and Ray ignore a leading `.`; a
    table's own parts are staged outside its folder altogether (see `write_atomic`)."""
    return f".{name}{TMP_MARK}{uuid.uuid4().hex}"


def is_tmp(name: str) -> bool:
    """A temporary file of a write that never finished (today's names and older ones)."""
    return TMP_MARK in name


def write_atomic(uri: str, data: bytes, tmp_dir: str | None = None) -> None:
    """Readers see the old object or the whole new one, never a part.

    Local: temp file + rename. The temp file sits in `tmp_dir` when given (same
    filesystem: a version's `_work/tmp/`, so no glob over a table folder ever sees it,
    DuckDB's and polars' `dir/*` included), else beside the target under a `.` name.
    GCS: a single-object upload only becomes visible when complete, which is the object
    store's equivalent.
    """
    if is_remote(uri):
        write_bytes(uri, data)
        return
    path = resolve(uri)[1]
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    where = resolve(tmp_dir)[1] if tmp_dir else parent
    if tmp_dir:
        os.makedirs(where, exist_ok=True)
    tmp = os.path.join(where, tmp_name(os.path.basename(path)))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a write's ENOSPC names no file
            raise OSError(e.errno, e.strerror, path) from e
        raise


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        try:
            fs.delete_dir(path)
        except FileNotFoundError:
            if not is_remote(uri):
                raise  # GCS: the contents are gone; a "dir/" marker never existed
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def write_parquet(table: pa.Table, uri: str, tmp_dir: str | None = None) -> None:
    """Write one Parquet file, atomically for local paths (see write_atomic's tmp_dir).
    Like every file loom writes, it names the schema version (records.SCHEMA_VERSION)
    in its metadata."""
    meta = dict(table.schema.metadata or {})
    meta.setdefault(b"loom.schema_version", str(SCHEMA_VERSION).encode())
    table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    write_atomic(uri, sink.getvalue().to_pybytes(), tmp_dir)


def read_parquet(uris: list[str], columns: list[str] | None = None,
                 schema: pa.Schema | None = None) -> pa.Table:
    tables = []
    for uri in uris:
        fs, path = resolve(uri)
        try:
            tables.append(pq.read_table(path, filesystem=fs, columns=columns))
        except pa.ArrowInvalid:  # an older file without some asked-for column
            have = set(pq.read_schema(path, filesystem=fs).names)
            if columns is None or set(columns) <= have:
                raise  # not a missing column: a broken file stays an error
            tables.append(pq.read_table(path, filesystem=fs,
                                        columns=[c for c in columns or [] if c in have]))
    if not tables:
        if schema is None:
            raise ValueError("no files to read and no schema given")
        return schema.empty_table() if columns is None else schema.empty_table().select(columns)
    return pa.concat_tables(tables, promote_options="default")
