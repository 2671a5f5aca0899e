"""schemas.storage on a local folder and on gs:// (a GCS emulator), same test bodies.

Objects written by schemas.storage are read with the official google-cloud-storage client
and the other way round, so loom's view of a bucket is the bucket's real layout.
"""

from __future__ import annotations

import uuid

import pytest
from loom.schemas import storage
from loom.schemas.manifest import MANIFEST, VersionWriter, read_table, resolve_input
from loom.schemas.records import EMBEDDING, REJECTED, to_table


@pytest.fixture(params=["local", "gcs"])
def base(request, tmp_path):
    """A fresh, empty prefix: a local folder or gs://<bucket>/<random>."""
    if request.param == "local":
        return str(tmp_path / "store")
    gcs = request.getfixturevalue("gcs")
    return f"gs://{gcs.bucket}/t-{uuid.uuid4().hex[:12]}"


def rejected(n: int):
    return to_table([{"uri": f"u{i}", "stage": "ingest", "reason": "empty"}
                     for i in range(n)], REJECTED)


def test_bytes_exists_list_delete(base):
    a, b, c = (storage.join(base, p) for p in ("a.bin", "sub/b.bin", "sub/deep/c.txt"))
    assert not storage.exists(a)
    assert storage.list_files(base) == []
    storage.write_bytes(a, b"alpha")
    storage.write_bytes(b, b"")
    storage.write_bytes(c, "ü".encode())
    assert storage.exists(a) and storage.exists(b) and storage.exists(storage.join(base, "sub"))
    assert storage.read_bytes(a) == b"alpha"
    assert storage.read_bytes(a, limit=2) == b"al"
    assert storage.read_bytes(b) == b""
    assert storage.read_bytes(c).decode() == "ü"

    files = storage.list_files(base)
    assert [f.uri for f in files] == sorted([a, b, c])
    assert [f.size for f in files] == [5, 0, 2]
    assert all(f.mtime_ns > 0 for f in files)
    assert [f.uri for f in storage.list_files(base, ".txt")] == [c]
    assert [f.uri for f in storage.list_files(a)] == [a]  # a file lists itself
    assert storage.list_files(storage.join(base, "nope")) == []
    assert storage.list_dirs(storage.join(base, "nope")) == []

    storage.write_bytes(a, b"beta")  # overwrite
    assert storage.read_bytes(a) == b"beta"

    storage.delete(a)
    assert not storage.exists(a)
    storage.delete(a)  # deleting what is gone is a no-op
    storage.delete(storage.join(base, "sub"))
    assert not storage.exists(b) and not storage.exists(c)
    assert storage.list_files(base) == []


def test_list_dirs(request, base):
    for p in ("v2/t/x.bin", "v1/y.bin", "z.bin"):
        storage.write_bytes(storage.join(base, p), b"1")
    assert storage.list_dirs(base) == [storage.join(base, "v1"), storage.join(base, "v2")]


def test_write_atomic_replaces_whole_object(base):
    uri = storage.join(base, "v", MANIFEST)
    storage.write_atomic(uri, b"{}")
    assert storage.read_bytes(uri) == b"{}"
    storage.write_atomic(uri, b'{"a": 1}')
    assert storage.read_bytes(uri) == b'{"a": 1}'
    # Exactly one object: no temp names left beside it.
    assert [f.uri for f in storage.list_files(base)] == [uri]


def test_parquet_round_trip(base):
    t1 = to_table([{"id": "a", "checkpoint": "c", "dim": 2, "vector": [0.5, 1.0]}], EMBEDDING)
    t2 = to_table([{"id": "b", "checkpoint": "c", "dim": 2, "vector": [0.0, -2.0],
                    "modality": "text"}], EMBEDDING)
    u1, u2 = storage.join(base, "e", "p1.parquet"), storage.join(base, "e", "p2.parquet")
    storage.write_parquet(t1, u1)
    storage.write_parquet(t2, u2)
    back = storage.read_parquet([u1, u2])
    assert back.schema.equals(EMBEDDING)
    assert back.column("id").to_pylist() == ["a", "b"]
    assert back.column("vector").to_pylist() == [[0.5, 1.0], [0.0, -2.0]]
    assert storage.read_parquet([u2], columns=["id", "dim"]).to_pylist() == [
        {"id": "b", "dim": 2}]
    assert storage.read_parquet([], schema=EMBEDDING).num_rows == 0
    with pytest.raises(ValueError):
        storage.read_parquet([])


def test_version_commit_and_resolve_version_dir(base):
    w = VersionWriter(base, "ingest", "ingest-00000000000000aa")
    recs = [w.write_part("rejected", f"part-{i:05d}", rejected(2 + i)) for i in range(3)]
    m = w.commit({"rejected": recs}, {"rejected": 9}, {"x": 1}, {})
    w.write_part("rejected", "part-99999", rejected(50))  # a stray, unlisted part
    assert w.existing() == m
    d, got = resolve_input(w.dir)
    assert d == w.dir and got == m
    assert read_table(d, got, "rejected").num_rows == 9


def test_version_commit_and_resolve_root(request, base):
    w = VersionWriter(base, "ingest", "ingest-00000000000000bb")
    w.commit({"rejected": [w.write_part("rejected", "part-00000", rejected(4))]},
             {"rejected": 4}, {}, {})
    VersionWriter(base, "ingest", "ingest-00000000000000cc").write_part(
        "rejected", "part-00000", rejected(1))  # no manifest: invisible
    d, m = resolve_input(base)
    assert d == w.dir and m.version == "ingest-00000000000000bb"
    assert read_table(d, m, "rejected").num_rows == 4


def test_no_version_under_empty_root(base):
    with pytest.raises(FileNotFoundError):
        resolve_input(base)


# --- interoperability with the official client -------------------------------------------

def test_storage_writes_client_reads(gcs):
    prefix = f"interop-{uuid.uuid4().hex[:8]}"
    storage.write_bytes(f"gs://{gcs.bucket}/{prefix}/a/b.bin", b"from-loom")
    storage.write_parquet(rejected(3), f"gs://{gcs.bucket}/{prefix}/r.parquet")
    client = gcs.client()
    bucket = client.bucket(gcs.bucket)
    assert bucket.blob(f"{prefix}/a/b.bin").download_as_bytes() == b"from-loom"
    names = [b.name for b in client.list_blobs(gcs.bucket, prefix=f"{prefix}/")
             if not b.name.endswith("/")]  # Arrow's directory markers end in '/'
    assert names == [f"{prefix}/a/b.bin", f"{prefix}/r.parquet"]

    import io

    import pyarrow.parquet as pq
    data = bucket.blob(f"{prefix}/r.parquet").download_as_bytes()
    assert pq.read_table(io.BytesIO(data)).equals(rejected(3))


def test_client_writes_storage_reads(gcs):
    prefix = f"interop-{uuid.uuid4().hex[:8]}"
    bucket = gcs.client().bucket(gcs.bucket)
    bucket.blob(f"{prefix}/x/1.bin").upload_from_string(b"one")
    bucket.blob(f"{prefix}/x/y/2.bin").upload_from_string(b"two!")
    big = bytes(range(256)) * 4096  # 1 MiB, resumable upload
    blob = bucket.blob(f"{prefix}/big.bin", chunk_size=256 * 1024)
    blob.upload_from_string(big)

    root = f"gs://{gcs.bucket}/{prefix}"
    files = storage.list_files(root)
    assert [f.uri for f in files] == [f"{root}/big.bin", f"{root}/x/1.bin", f"{root}/x/y/2.bin"]
    assert [f.size for f in files] == [len(big), 3, 4]
    assert storage.read_bytes(f"{root}/x/y/2.bin") == b"two!"
    assert storage.read_bytes(f"{root}/big.bin") == big
    assert storage.exists(f"{root}/x")  # a prefix without a marker object is a folder


def test_client_written_prefixes_are_dirs(gcs):
    prefix = f"interop-{uuid.uuid4().hex[:8]}"
    bucket = gcs.client().bucket(gcs.bucket)
    bucket.blob(f"{prefix}/v1/manifest.json").upload_from_string(b"{}")
    assert storage.list_dirs(f"gs://{gcs.bucket}/{prefix}") == [
        f"gs://{gcs.bucket}/{prefix}/v1"]


def test_delete_client_written_folder(gcs):
    prefix = f"interop-{uuid.uuid4().hex[:8]}"
    bucket = gcs.client().bucket(gcs.bucket)
    bucket.blob(f"{prefix}/d/1.bin").upload_from_string(b"1")
    storage.delete(f"gs://{gcs.bucket}/{prefix}/d")
    assert not storage.exists(f"gs://{gcs.bucket}/{prefix}/d/1.bin")
