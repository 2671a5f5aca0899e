"""Ingest's listing streamed to Parquet parts (issue 16): the same files, order, digest
(so the same version ids) and bad names as the listing held in memory gave."""

from __future__ import annotations

import hashlib
import os

import pyarrow as pa
import pytest
from loom.pipelines import ingest_listing
from loom.pipelines.work import load_item
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import INGEST_WORK

# Names whose sorted order a per-folder walk gets wrong unless a folder sorts as `name/`
NAMES = ["a-b", "a.b/x", "a/x", "a/y/z", "a0", "ab", "z/a-", "z/a.txt", "z/a/b", "é",
         "d/e/f/g.txt", "d/e-f", "d/e.f"]


def _tree(root) -> str:
    for i, name in enumerate(NAMES):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (i % 3))
        os.utime(path, ns=(1_700_000_000_000_000_000 + i, 1_700_000_000_000_000_000 + i))
    (root / "a-link").symlink_to(root / "a")  # a link to a folder: listed, not entered
    (root / "broken").symlink_to(root / "nowhere")
    os.mkfifo(root / "fifo")
    with open(os.fsencode(str(root)) + b"/bad\xffname.txt", "wb") as f:
        f.write(b"bad")
    return str(root)


def _old_digest(prefix: str) -> tuple[str, dict[str, str], list[storage.FileEntry]]:
    """What run_ingest computed before: the whole listing, names escaped, then hashed."""
    listing, bad = [], {}
    for e in storage.list_files(prefix):
        e, bad_id = ingest_listing.escape_name(e)
        listing.append(e)
        if bad_id:
            bad[e.uri] = bad_id
    return mf.listing_digest(listing), bad, listing


def test_iter_files_is_list_files_in_order(tmp_path):
    root = _tree(tmp_path / "raw")
    listed = storage.list_files(root)
    assert list(storage.iter_files(root)) == listed
    assert len(listed) == len(NAMES) + 4
    assert list(storage.iter_files(root, ".txt")) == storage.list_files(root, ".txt")
    one = storage.join(root, "ab")
    assert list(storage.iter_files(one)) == storage.list_files(one) != []
    assert list(storage.iter_files(storage.join(root, "nope"))) == []


@pytest.mark.parametrize("part_rows", [3, 1000])
def test_written_listing_matches_the_listing_in_memory(tmp_path, monkeypatch, part_rows):
    monkeypatch.setattr(ingest_listing, "PART_ROWS", part_rows)
    root = _tree(tmp_path / "raw")
    digest, bad, entries = _old_digest(root)
    got = ingest_listing.write_listing(root, str(tmp_path / "out"))
    assert got.digest == digest
    assert (got.listed, got.bytes_in) == (len(entries), sum(e.size for e in entries))
    assert got.bad_names == bad and len(bad) == 1
    assert len(got.parts) == -(-len(entries) // part_rows)
    assert list(got.entries()) == [e for e in entries if e.uri not in bad]
    first = got.dir
    got.move_to(str(tmp_path / "out" / "v" / "_work" / "listing"))
    assert not os.path.exists(first) and os.listdir(tmp_path / "out") == ["v"]
    assert list(got.entries()) == [e for e in entries if e.uri not in bad]
    got.delete()
    assert not os.path.exists(got.dir)


def test_digest_is_the_one_before_by_hand(tmp_path):
    """A fixed listing's digest, computed the way `listing_digest` always has."""
    root = tmp_path / "raw"
    root.mkdir()
    for name, data in (("b.txt", b"bb"), ("a.txt", b"a")):
        (root / name).write_bytes(data)
        os.utime(root / name, ns=(5, 7))
    h = hashlib.sha256(f"{root}/a.txt\0{1}\0{7}\n{root}/b.txt\0{2}\0{7}\n".encode())
    assert ingest_listing.write_listing(str(root), str(tmp_path / "o")).digest == \
        f"raw-{h.hexdigest()[:16]}"


def test_items_keep_one_size_together(tmp_path, monkeypatch):
    """Files of one listed size land in one item, in URI order, whatever part of the
    listing they were in; each item reads back as the stage's input rows."""
    monkeypatch.setattr(ingest_listing, "PART_ROWS", 5)
    monkeypatch.setattr(ingest_listing, "FILES_PER_PARTITION", 6)  # several partitions
    root = tmp_path / "raw"
    root.mkdir()
    for i in range(30):
        (root / f"f{i:03d}.txt").write_bytes(b"y" * (1 + i % 4))  # 4 sizes, spread out
    for i in range(3):
        (root / f"e{i}.txt").write_bytes(b"")
    listing = ingest_listing.write_listing(str(root), str(tmp_path / "out"))
    vdir = str(tmp_path / "out" / "v")
    skip = {str(root / "f000.txt")}
    items = ingest_listing.work_items("beam", vdir, listing, 8, skip, [], False)
    seen: list[str] = []
    by_size: dict[int, set[str]] = {}
    for item in items:
        batch = load_item(item, INGEST_WORK)
        assert batch.schema.names == INGEST_WORK.names
        uris = batch.column("uri").to_pylist()
        assert batch.column("size").null_count == len(uris)  # local: sized by the read
        seen.extend(uris)
        for u in uris:
            size = os.path.getsize(u)
            if size:
                by_size.setdefault(size, set()).add(item["name"])
        sizes = [os.path.getsize(u) for u in uris]
        for s in set(sizes) - {0}:  # a size's files are adjacent, in URI order
            run = [u for u in uris if os.path.getsize(u) == s]
            assert run == sorted(run)
    assert sorted(seen) == sorted(e.uri for e in listing.entries() if e.uri not in skip)
    # a size group of 7 or 8 files fits an item of 8: it is never split
    assert all(len(names) == 1 for names in by_size.values()), by_size
    assert [i["name"] for i in items] == sorted(i["name"] for i in items)
    assert len({i["name"] for i in items}) == len(items)


def test_load_item_reads_only_its_row_groups(tmp_path):
    import pyarrow.parquet as pq

    t = pa.table({"uri": [f"u{i}" for i in range(10)]})
    path = str(tmp_path / "x.parquet")
    with pq.ParquetWriter(path, t.schema) as w:
        for a, b in ((0, 3), (3, 4), (4, 10)):
            w.write_table(t.slice(a, b - a), row_group_size=b - a)
    for off, n in ((0, 3), (3, 1), (4, 6), (2, 5)):
        got = load_item({"file": path, "offset": off, "length": n},
                        pa.schema([("uri", pa.string())]))
        assert got.column(0).to_pylist() == [f"u{i}" for i in range(off, off + n)]


def test_items_grow_past_max_items_while_small(tmp_path, monkeypatch):
    """Past `per_item * MAX_ITEMS` files an item takes more than `per_item` files, about
    MAX_ITEMS items in all, but never more than ITEM_BYTES of listed bytes: small files
    make fewer, larger items; large files stay `per_item` a piece. Every file once."""
    monkeypatch.setattr(ingest_listing, "MAX_ITEMS", 4)
    monkeypatch.setattr(ingest_listing, "ITEM_BYTES", 2000)
    root = tmp_path / "raw"
    root.mkdir()
    for i in range(60):  # distinct sizes: no group travels together
        (root / f"s{i:03d}.txt").write_bytes(b"s" * (10 + i))
    listing = ingest_listing.write_listing(str(root), str(tmp_path / "out"))

    def sizes_of(items):
        return [[os.path.getsize(u) for u in load_item(i, INGEST_WORK).column("uri").to_pylist()]
                for i in items]

    small = sizes_of(ingest_listing.work_items("beam", str(tmp_path / "v1"), listing, 4,
                                               set(), [], False))
    assert sorted(s for item in small for s in item) == list(range(10, 70))
    assert [len(item) for item in small] == [15, 15, 15, 15]  # 60 files / MAX_ITEMS 4

    for i in range(60, 80):  # 20 large files: 900 bytes each, 2 fit ITEM_BYTES
        (root / f"s{i:03d}.txt").write_bytes(b"L" * (900 + i))
    listing = ingest_listing.write_listing(str(root), str(tmp_path / "out2"))
    mixed = sizes_of(ingest_listing.work_items("beam", str(tmp_path / "v2"), listing, 4,
                                               set(), [], False))
    assert sorted(s for item in mixed for s in item) == sorted(
        list(range(10, 70)) + [900 + i for i in range(60, 80)])
    assert max(sum(item) for item in mixed if len(item) > 4) <= 2000
    assert all(len(item) <= 4 for item in mixed if max(item) >= 900)
    assert max(len(item) for item in mixed) == 20  # 80 files / 4 items
