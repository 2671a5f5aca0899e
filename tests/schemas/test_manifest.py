"""Version ids, listing digests, manifests written last, and how readers find data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.manifest import (
    MANIFEST,
    Manifest,
    VersionWriter,
    listing_digest,
    read_table,
    resolve_input,
    version_id,
)
from loom.schemas.records import REJECTED, Split, to_table
from loom.schemas.splits import split_for

REPO = Path(__file__).resolve().parents[2]


def rejected(n: int, start: int = 0) -> pa.Table:
    rows = [{"uri": f"gs://raw/{i}.bin", "stage": "ingest", "reason": "empty",
             "message": None, "record_id": None} for i in range(start, start + n)]
    return to_table(rows, REJECTED)


def commit_version(root: str, version: str, parts: list[int]) -> Manifest:
    w = VersionWriter(root, "ingest", version)
    recs, start = [], 0
    for i, n in enumerate(parts):
        recs.append(w.write_part("rejected", f"part-{i:05d}", rejected(n, start)))
        start += n
    return w.commit({"rejected": recs}, {"rejected": start}, {"k": 1}, {"raw": "raw-x"})


# --- version ids ---------------------------------------------------------------------

def test_version_id_is_stable():
    a = version_id("ingest", ["raw-1"], {"b": 2, "a": [1, 2]})
    b = version_id("ingest", ["raw-1"], {"a": [1, 2], "b": 2})  # key order is irrelevant
    assert a == b
    assert a.startswith("ingest-") and len(a) == len("ingest-") + 16


def test_version_id_is_stable_across_processes():
    code = ("from schemas.manifest import version_id;"
            "print(version_id('ingest', ['raw-1'], {'a': [1, 2], 'b': 2}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=60).stdout.strip()
    assert out == version_id("ingest", ["raw-1"], {"b": 2, "a": [1, 2]})


def test_version_id_changes_with_config_input_stage_and_logic(monkeypatch):
    base = version_id("ingest", ["raw-1"], {"a": 1})
    assert version_id("ingest", ["raw-1"], {"a": 2}) != base
    assert version_id("ingest", ["raw-1"], {"a": 1, "b": None}) != base
    assert version_id("ingest", ["raw-2"], {"a": 1}) != base
    assert version_id("ingest", ["raw-1", "raw-2"], {"a": 1}) != base
    assert version_id("synth", ["raw-1"], {"a": 1}).split("-")[1] != base.split("-")[1]
    monkeypatch.setitem(mf.STAGE_LOGIC, "ingest", mf.STAGE_LOGIC["ingest"] + 1)
    bumped = version_id("ingest", ["raw-1"], {"a": 1})
    assert bumped != base
    monkeypatch.undo()
    assert version_id("ingest", ["raw-1"], {"a": 1}) == base


def test_listing_digest_tracks_uri_size_and_mtime(tmp_path):
    f = tmp_path / "raw" / "a.bin"
    f.parent.mkdir()
    f.write_bytes(b"abc")
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    d0 = listing_digest(storage.list_files(str(tmp_path / "raw")))
    assert d0.startswith("raw-")
    assert listing_digest(storage.list_files(str(tmp_path / "raw"))) == d0

    os.utime(f, ns=(2_000_000_000, 2_000_000_000))  # touched: same bytes, new mtime
    d1 = listing_digest(storage.list_files(str(tmp_path / "raw")))
    assert d1 != d0

    f.write_bytes(b"abcd")  # new size
    os.utime(f, ns=(2_000_000_000, 2_000_000_000))
    d2 = listing_digest(storage.list_files(str(tmp_path / "raw")))
    assert d2 not in (d0, d1)

    (tmp_path / "raw" / "b.bin").write_bytes(b"")  # a new file
    assert listing_digest(storage.list_files(str(tmp_path / "raw"))) != d2
    assert listing_digest([]) == listing_digest([])


def test_listing_digest_on_entries():
    e = storage.FileEntry("gs://b/x", 3, 10)
    assert listing_digest([e]) != listing_digest([storage.FileEntry("gs://b/x", 4, 10)])
    assert listing_digest([e]) != listing_digest([storage.FileEntry("gs://b/x", 3, 11)])
    assert listing_digest([e]) != listing_digest([storage.FileEntry("gs://b/y", 3, 10)])


# --- manifests and resolution ----------------------------------------------------------

def test_manifest_json_round_trip(tmp_path):
    m = commit_version(str(tmp_path), "ingest-aaaa", [2, 3])
    text = (tmp_path / "ingest-aaaa" / MANIFEST).read_text()
    assert json.loads(text)["version"] == "ingest-aaaa"
    again = Manifest.from_json(text)
    assert again == m
    assert again.rows("rejected") == 5 and again.rows("missing") == 0
    assert again.logic_version == mf.logic_version("ingest")


def test_commit_then_resolve_finds_newest_complete(tmp_path):
    root = str(tmp_path / "root")
    with pytest.raises(FileNotFoundError):
        resolve_input(root)
    commit_version(root, "ingest-zzzz", [1])
    time.sleep(0.002)  # created_at has microsecond resolution
    commit_version(root, "ingest-aaaa", [2, 3])  # newer, though it sorts first by name
    d, m = resolve_input(root)
    assert d == os.path.join(root, "ingest-aaaa")
    assert m.version == "ingest-aaaa" and m.counts == {"rejected": 5}
    assert read_table(d, m, "rejected").num_rows == 5

    # A version folder given directly is taken as is, even when it is not the newest.
    d2, m2 = resolve_input(os.path.join(root, "ingest-zzzz"))
    assert m2.version == "ingest-zzzz" and read_table(d2, m2, "rejected").num_rows == 1


def test_version_without_manifest_is_invisible(tmp_path):
    root = str(tmp_path / "root")
    commit_version(root, "ingest-old0", [4])
    time.sleep(0.002)
    # A newer version whose run died before its manifest: parts only.
    w = VersionWriter(root, "ingest", "ingest-new0")
    w.write_part("rejected", "part-00000", rejected(9))
    d, m = resolve_input(root)
    assert m.version == "ingest-old0"
    assert w.existing() is None
    with pytest.raises(FileNotFoundError):
        resolve_input(str(tmp_path / "only-parts"))


def test_read_table_reads_only_listed_files(tmp_path):
    root = str(tmp_path / "root")
    commit_version(root, "ingest-aaaa", [2, 3])
    d, m = resolve_input(root)
    # Stray parts (a killed earlier attempt's) beside the listed ones.
    VersionWriter(root, "ingest", "ingest-aaaa").write_part("rejected", "part-99999",
                                                            rejected(100))
    assert len(storage.list_files(os.path.join(d, "rejected"), ".parquet")) == 3
    t = read_table(d, m, "rejected")
    assert t.num_rows == 5
    assert t.column("uri").to_pylist() == [f"gs://raw/{i}.bin" for i in range(5)]
    # A table the manifest does not have reads as empty with its schema.
    assert read_table(d, m, "examples").num_rows == 0
    assert read_table(d, m, "examples", columns=["id"]).column_names == ["id"]


# --- a killed writer leaves nothing visible -----------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time
    from loom.schemas.manifest import VersionWriter
    from loom.schemas.records import REJECTED, to_table

    root, version, nparts, hang = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    w = VersionWriter(root, "ingest", version)
    recs, total = [], 0
    for i in range(nparts):
        rows = [{"uri": f"u{i}-{j}", "stage": "ingest", "reason": "empty"}
                for j in range(10 + i)]
        recs.append(w.write_part("rejected", f"part-{i:05d}", to_table(rows, REJECTED)))
        total += len(rows)
    if hang == "hang":
        print("PARTS-WRITTEN", flush=True)
        time.sleep(300)
    w.commit({"rejected": recs}, {"rejected": total}, {}, {})
    print("COMMITTED", total, flush=True)
""")


def _child(root: str, version: str, nparts: int, hang: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", CHILD, root, version, str(nparts), hang],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)


def test_killed_writer_leaves_no_version_and_rerun_commits(tmp_path):
    root = str(tmp_path / "root")
    version = "ingest-0123456789abcdef"

    first = _child(root, version, 5, "hang")
    try:
        line = first.stdout.readline()  # blocks until the parts are written
        assert line.strip() == "PARTS-WRITTEN", line
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stdout.close()
    assert first.returncode == -signal.SIGKILL
    vdir = os.path.join(root, version)
    assert len(storage.list_files(os.path.join(vdir, "rejected"), ".parquet")) == 5
    assert not storage.exists(os.path.join(vdir, MANIFEST))
    with pytest.raises(FileNotFoundError):
        resolve_input(root)
    with pytest.raises(FileNotFoundError):
        resolve_input(vdir)  # the folder itself is not a version either

    # The rerun writes the same version completely (its chunking gives 3 parts).
    second = _child(root, version, 3, "no")
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0, out
    assert out.strip() == "COMMITTED 33"

    d, m = resolve_input(root)
    assert d == vdir and m.version == version
    assert m.counts == {"rejected": 33} and m.rows("rejected") == 33
    listed = [f.path for f in m.tables["rejected"]]
    assert listed == [f"rejected/part-{i:05d}.parquet" for i in range(3)]
    # Parts 3 and 4 of the killed run are still on disk but not listed, nor read.
    assert len(storage.list_files(os.path.join(vdir, "rejected"), ".parquet")) == 5
    t = read_table(d, m, "rejected")
    assert t.num_rows == 33
    assert not any(u.startswith(("u3-", "u4-")) for u in t.column("uri").to_pylist())
    # No temp files are left behind by the atomic writes.
    assert not [e for e in storage.list_files(root) if ".tmp-" in e.uri]


# --- splits ------------------------------------------------------------------------------

def test_split_for_is_deterministic_and_near_fraction():
    ids = [f"id-{i}" for i in range(10_000)]
    first = [split_for(i) for i in ids]
    assert first == [split_for(i) for i in ids]
    heldout = sum(s is Split.HELDOUT for s in first)
    assert abs(heldout / len(ids) - 0.2) < 0.02
    assert heldout == 1980  # pinned: the same on every engine and machine
    for frac in (0.05, 0.5):
        share = sum(split_for(i, frac) is Split.HELDOUT for i in ids) / len(ids)
        assert abs(share - frac) < 0.02
    assert all(split_for(i, 0.0) is Split.TRAIN for i in ids[:500])
    assert all(split_for(i, 1.0) is Split.HELDOUT for i in ids[:500])
    # Monotone in the fraction: raising it only moves ids into held-out.
    assert all(split_for(i, 0.3) is Split.HELDOUT for i, s in zip(ids, first, strict=False)
               if s is Split.HELDOUT)
    # The salt changes the assignment.
    assert [split_for(i, salt="other") for i in ids[:200]] != first[:200]


# --- exact values, worked out here from the documented formats ------------------------------

def test_version_id_is_sha256_of_the_canonical_payload():
    import hashlib

    payload = json.dumps({"stage": "shard", "inputs": ["a", "b"], "config": {"z": 1, "a": [2]},
                          "logic": mf.logic_version("shard")}, sort_keys=True,
                         separators=(",", ":"))
    want = "shard-" + hashlib.sha256(payload.encode()).hexdigest()[:16]
    assert version_id("shard", ["a", "b"], {"a": [2], "z": 1}) == want
    assert mf.canonical_json({"b": 1, "a": {"d": 2, "c": None}}) == '{"a":{"c":null,"d":2},"b":1}'
    assert mf.canonical_json({"p": Path("/x")}) == '{"p":"/x"}'  # str() for the rest
    assert mf.logic_version("shard") == (f"{mf.PACKAGE_VERSION}+shard.{mf.STAGE_LOGIC['shard']}"
                                         f"+schema.{mf.SCHEMA_VERSION}")
    assert mf.SCHEMA_VERSION == 3  # ITEMs carry their text (issue 15)


def test_listing_digest_by_hand():
    import hashlib

    entries = [storage.FileEntry("gs://b/a", 3, 7), storage.FileEntry("gs://b/c", 0, 9)]
    h = hashlib.sha256(b"gs://b/a\x003\x007\ngs://b/c\x000\x009\n").hexdigest()[:16]
    assert listing_digest(entries) == f"raw-{h}"


def test_manifest_files_rows_and_exact_json(tmp_path):
    w = VersionWriter(str(tmp_path), "ingest", "ingest-0000000000000001")
    parts = [w.write_part("rejected", f"p{i}", rejected(n)) for i, n in ((2, 3), (1, 2))]
    m = w.commit({"rejected": parts}, {"rejected": 5}, {"k": 1}, {"from": "x"})
    assert [f.path for f in m.tables["rejected"]] == ["rejected/p1.parquet",
                                                      "rejected/p2.parquet"]  # sorted
    assert m.rows("rejected") == 5 and m.rows("examples") == 0
    assert m.files(w.dir, "rejected") == [storage.join(w.dir, "rejected/p1.parquet"),
                                          storage.join(w.dir, "rejected/p2.parquet")]
    assert m.files(w.dir, "nothing") == []
    assert m.stage == "ingest" and m.logic_version == mf.logic_version("ingest")
    assert m.created_at.endswith("+00:00")
    on_disk = json.loads((tmp_path / "ingest-0000000000000001" / MANIFEST).read_text())
    # what was committed is what is stored: config, lineage, counts, today's schema (3)
    assert (on_disk["config"], on_disk["lineage"], on_disk["counts"]) == (
        {"k": 1}, {"from": "x"}, {"rejected": 5})
    assert on_disk["schema_version"] == 3 and on_disk["version"] == "ingest-0000000000000001"
    assert on_disk == json.loads(m.to_json())
    assert on_disk["tables"]["rejected"][0] == {"path": "rejected/p1.parquet", "rows": 2,
                                                "sha256": parts[1].sha256}
    assert Manifest.from_json(m.to_json()) == m
    assert w.existing() == m and mf.read_manifest(str(tmp_path / "none")) is None


def test_write_part_hash_rows_and_schema_cast(tmp_path):
    import hashlib

    rec = mf.write_part(str(tmp_path), "rejected", "part-1", rejected(4))
    body = (tmp_path / "rejected" / "part-1.parquet").read_bytes()
    assert rec.sha256 == hashlib.sha256(body).hexdigest() and rec.rows == 4
    assert rec.path == "rejected/part-1.parquet"
    loose = pa.table({"uri": ["u"], "stage": ["ingest"], "reason": ["empty"],
                      "message": pa.array([None], pa.string()),
                      "record_id": pa.array([None], pa.string())})
    mf.write_part(str(tmp_path), "rejected", "loose", loose.select(REJECTED.names))
    import pyarrow.parquet as pq

    assert pq.read_schema(tmp_path / "rejected" / "loose.parquet").equals(REJECTED)
    free = mf.write_part(str(tmp_path), "scratch", "x", pa.table({"a": [1, 2]}))
    assert free.rows == 2  # a table with no declared schema is written as is


def test_newest_version_by_time_then_name_and_accept(tmp_path):
    root = str(tmp_path)
    a = commit_version(root, "ingest-00000000000000aa", [1])
    b = commit_version(root, "ingest-00000000000000bb", [2])
    for d, m in ((a, "2026-01-02T00:00:00+00:00"), (b, "2026-01-01T00:00:00+00:00")):
        path = tmp_path / d.version / MANIFEST
        body = json.loads(path.read_text())
        body["created_at"] = m
        path.write_text(json.dumps(body))
    d, m = mf.newest_version(root)
    assert m.version == "ingest-00000000000000aa"  # the newer time, whatever the name
    d, m = mf.newest_version(root, lambda m: m.version.endswith("bb"))
    assert m.version == "ingest-00000000000000bb"
    assert mf.newest_version(root, lambda m: False) is None
    # the same time: the larger folder name wins
    path = tmp_path / "ingest-00000000000000bb" / MANIFEST
    body = json.loads(path.read_text())
    body["created_at"] = "2026-01-02T00:00:00+00:00"
    path.write_text(json.dumps(body))
    assert mf.newest_version(root)[1].version == "ingest-00000000000000bb"
    assert resolve_input(root)[1].version == "ingest-00000000000000bb"
    assert resolve_input(str(tmp_path / "ingest-00000000000000aa"))[0] == str(
        tmp_path / "ingest-00000000000000aa")
    with pytest.raises(FileNotFoundError, match="no complete dataset version under"):
        resolve_input(str(tmp_path / "empty"))
    assert mf.version_uri("gs://b/root", "v") == "gs://b/root/v"


def test_leftovers_and_sweep_tmp(tmp_path):
    """A killed run's temp files (any folder, any age of name) and `_work/` are leftovers;
    sweeping removes only the temp files: `_work/` parts are reused by the rerun."""
    d = tmp_path / "ingest-0000000000000009"
    files = {"examples/part-00000.parquet": b"kept", "examples/part-1.parquet.tmp-ab12": b"t1",
             "deep/er/x.tmp-zz": b"t2", "_work/part-00007.parquet": b"w",
             "_work/tmp/y.tmp-q": b"t3", "_workbench/notes.txt": b"not work"}
    for rel, body in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(body)
    uri = storage.absolute(str(d))

    def rel(entries) -> set[str]:
        return {e.uri[len(uri) + 1:] for e in entries}

    assert rel(mf.leftovers(uri)) == {"examples/part-1.parquet.tmp-ab12", "deep/er/x.tmp-zz",
                                      "_work/part-00007.parquet", "_work/tmp/y.tmp-q"}
    assert mf.sweep_tmp(uri) == 3
    left = {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}
    assert left == {"examples/part-00000.parquet", "_work/part-00007.parquet",
                    "_workbench/notes.txt"}
    assert mf.sweep_tmp(uri) == 0
    assert rel(mf.leftovers(uri)) == {"_work/part-00007.parquet"}


def test_part_uri_and_file_record_json(tmp_path):
    w = VersionWriter(str(tmp_path), "ingest", "ingest-00000000000000aa")
    assert w.part_uri("examples", "part-00003") == storage.join(
        str(tmp_path), "ingest-00000000000000aa", "examples", "part-00003.parquet")
    rec = mf.FileRecord(path="examples/part-00003.parquet", rows=4, sha256="ab")
    assert rec.to_json() == {"path": "examples/part-00003.parquet", "rows": 4, "sha256": "ab"}


def test_a_writer_under_the_lock_sweeps_a_killed_runs_temp_files(tmp_path):
    """Under the CLI's lock session a new writer of an uncommitted version removes the temp
    files a killed run left (no live writer can own them); `_work/` parts stay for reuse.
    Outside a session, or once the version is committed, nothing is touched."""
    from loom.schemas import lock

    root = str(tmp_path)
    d = tmp_path / "ingest-00000000000000bb"
    (d / "examples").mkdir(parents=True)
    (d / "_work").mkdir()
    stray, work = d / "examples" / "p.parquet.tmp-1", d / "_work" / "part-00000.parquet"
    stray.write_bytes(b"t")
    work.write_bytes(b"w")
    VersionWriter(root, "ingest", d.name)  # no session: no lock, no sweep
    assert stray.exists()
    with lock.session():
        VersionWriter(root, "ingest", d.name)
    assert not stray.exists() and work.exists()
    committed = commit_version(root, "ingest-00000000000000cc", [1])
    late = tmp_path / "ingest-00000000000000cc" / "x.tmp-2"
    late.write_bytes(b"t")
    with lock.session():
        VersionWriter(root, "ingest", "ingest-00000000000000cc")
    assert late.exists() and committed.version == "ingest-00000000000000cc"


def test_writer_parts_carry_extra_metadata(tmp_path):
    import pyarrow.parquet as pq

    w = VersionWriter(str(tmp_path), "ingest", "ingest-00000000000000dd")
    rec = w.write_part("rejected", "part-00000", rejected(2), metadata={"loom.spec": "s1"})
    meta = pq.read_schema(os.path.join(w.dir, rec.path)).metadata
    assert meta[b"loom.spec"] == b"s1"
    # joined to, not instead of, what every loom file carries
    assert meta[b"loom.schema_version"] == b"3" and meta[b"loom.table"] == b"rejected"


def test_parts_are_zstd_and_staged_under_work_until_commit(tmp_path):
    """A part is written through `_work/tmp/` (a temp file never sits among the parts) and
    compressed with zstd; the commit removes the empty staging folders."""
    import pyarrow.parquet as pq

    w = VersionWriter(str(tmp_path), "ingest", "ingest-00000000000000ee")
    rec = w.write_part("rejected", "part-00000", rejected(3))
    d = tmp_path / "ingest-00000000000000ee"
    assert (d / "_work" / "tmp").is_dir() and list((d / "_work" / "tmp").iterdir()) == []
    assert sorted(p.name for p in (d / "rejected").iterdir()) == ["part-00000.parquet"]
    meta = pq.ParquetFile(d / rec.path).metadata
    assert {meta.row_group(0).column(i).compression for i in range(meta.num_columns)} == {
        "ZSTD"}
    w.commit({"rejected": [rec]}, {"rejected": 3}, {}, {})
    assert not (d / "_work").exists()
    assert not (Path.cwd() / "_work").exists()
    # a version with no parts commits too (there is no staging folder to remove)
    empty = VersionWriter(str(tmp_path), "ingest", "ingest-00000000000000ef")
    assert empty.commit({}, {}, {}, {}).rows("rejected") == 0


def test_read_table_fills_columns_an_older_file_lacks(tmp_path):
    import pyarrow.parquet as pq

    d = tmp_path / "ingest-00000000000000f0"
    (d / "rejected").mkdir(parents=True)
    full = rejected(2)
    last = full.column_names[-1]
    pq.write_table(full.drop_columns([last]), d / "rejected" / "old.parquet")
    m = Manifest("ingest", d.name, {"rejected": [mf.FileRecord("rejected/old.parquet", 2, "x")]},
                 {"rejected": 2}, {}, {}, schema_version=1)
    got = mf.read_table(str(d), m, "rejected")
    assert last in got.column_names and got.column(last).null_count == 2
    assert got.schema.field(last).nullable  # the schema admits the nulls it holds
    first = full.column_names[0]
    assert mf.read_table(str(d), m, "rejected", columns=[first]).column_names == [first]
    bad = Manifest("ingest", d.name, m.tables, {}, {}, {}, schema_version=99)
    with pytest.raises(mf.UnknownSchemaVersion, match=d.name):
        mf.read_table(str(d), bad, "rejected")
    (d / MANIFEST).write_text(bad.to_json())
    with pytest.raises(mf.UnknownSchemaVersion, match=d.name):
        resolve_input(str(d))  # a version folder given directly


def test_only_file_names_mark_temp_files(tmp_path):
    """A root under a folder whose name happens to hold the temp mark: its committed parts
    are neither leftovers nor swept; only the temp file itself is."""
    root = tmp_path / "scratch.tmp-1"
    commit_version(str(root), "ingest-00000000000000f1", [2])
    d = root / "ingest-00000000000000f1"
    (d / "rejected" / "p.parquet.tmp-9").write_bytes(b"t")
    uri = storage.absolute(str(d))
    assert [e.uri for e in mf.leftovers(uri)] == [storage.join(uri, "rejected/p.parquet.tmp-9")]
    assert mf.sweep_tmp(uri) == 1
    assert mf.read_table(uri, mf.read_manifest(uri), "rejected").num_rows == 2
