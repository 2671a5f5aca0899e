"""Ingest reads every listed object once (issue 21): the read that decodes also hashes, and
duplicates are resolved from those hashes, so the outcome tables are those of a
hash-first ingest whatever the work items look like."""

from __future__ import annotations

import uuid

from loom.jobs.corpus import generate_corpus
from loom.pipelines import ingest_once
from loom.pipelines.ingest import run_ingest
from loom.pipelines.runner import Engine
from loom.schemas import manifest as mf
from loom.schemas import storage


def _copy(src: str, dst: str) -> None:
    storage.write_bytes(dst, storage.read_bytes(src))


def _tables(out: dict) -> dict[str, list]:
    vdir, manifest = mf.resolve_input(out["uri"].rsplit("/", 1)[0])
    assert vdir == out["uri"]
    rows = {t: mf.read_table(vdir, manifest, t).to_pylist()
            for t in ("examples", "rejected", "duplicates", "files")}
    return {
        "examples": sorted((r["id"], tuple(r["source_uris"]), r["modality"])
                           for r in rows["examples"]),
        "rejected": sorted((r["uri"], r["reason"], r["record_id"]) for r in rows["rejected"]),
        "duplicates": sorted((r["uri"], r["duplicate_of"]) for r in rows["duplicates"]),
        "files": sorted((r["uri"], r["id"], r["outcome"]) for r in rows["files"]),
    }


def test_every_object_is_downloaded_once(gcs, monkeypatch):
    """Counted at the store: the emulator logs each content download. The old hash pass
    (then a decode pass) downloaded every object twice."""
    base = f"gs://{gcs.bucket}/once-{uuid.uuid4().hex[:8]}"
    generate_corpus(f"{base}/corpus", 8, 8, seed=5)  # bad files and one copy included
    media = f"{base}/corpus/media"
    listed = storage.list_files(media)
    texts = [e.uri for e in listed if e.uri.endswith(".txt")]
    images = [e.uri for e in listed if e.uri.endswith(".png")]
    _copy(texts[0], f"{media}/zz-late-copy.txt")  # far from its original: another item
    _copy(images[0], f"{media}/aa-early-copy.png")  # sorts first: the original's canonical
    before = gcs.downloads()
    monkeypatch.setattr(ingest_once, "LOCAL_MAX_FILES", 0)  # copies resolved on the engine
    out = run_ingest(media, f"{base}/out", engine=Engine.BEAM, files_per_item=3)
    after = gcs.downloads()
    prefix = f"{gcs.bucket}/{media.removeprefix(f'gs://{gcs.bucket}/')}/"
    reads = {k: after[k] - before.get(k, 0) for k in after
             if k.startswith(prefix) and after[k] > before.get(k, 0)}
    listed = storage.list_files(media)
    assert len(listed) == 16 + 5 + 2
    assert reads == {e.uri.removeprefix("gs://"): 1 for e in listed}
    c = out["counts"]
    assert c["listed"] == 23 == c["accepted"] + c["duplicate"] + c["rejected"]
    assert (c["accepted"], c["duplicate"]) == (17, 3)  # the corpus's copy and our two
    dups = {r[0].rsplit("/", 1)[-1] for r in _tables(out)["duplicates"]}
    assert images[0].rsplit("/", 1)[-1] in dups and "zz-late-copy.txt" in dups


def test_item_size_does_not_change_the_outcome(tmp_path, monkeypatch):
    """Copies met in the same item are hashed, not decoded; copies in other items are
    decoded there and dropped after: one file per item and 64 give the same tables, with
    copies resolved on the engine (as a large corpus's are) or in the driver."""
    generate_corpus(str(tmp_path / "c"), 6, 6, seed=3)
    media = tmp_path / "c" / "media"
    listed = sorted(p for p in media.rglob("*") if p.is_file())
    png = next(p for p in listed if p.suffix == ".png")
    txt = next(p for p in listed if p.suffix == ".txt")
    for name, src in (("0-first.png", png), ("zz-last.png", png), ("zz-last.txt", txt),
                      ("sub/copy.txt", txt)):
        (media / name).parent.mkdir(exist_ok=True)
        (media / name).write_bytes(src.read_bytes())
    with monkeypatch.context() as m:
        m.setattr(ingest_once, "LOCAL_MAX_FILES", 0)
        one = run_ingest(str(media), str(tmp_path / "one"), engine=Engine.BEAM,
                         files_per_item=1)
    many = run_ingest(str(media), str(tmp_path / "many"), engine=Engine.BEAM)
    layout = {"bytes_out"}  # more, smaller parts: only the bytes written differ
    assert ({k: v for k, v in one["counts"].items() if k not in layout}
            == {k: v for k, v in many["counts"].items() if k not in layout})
    a, b = _tables(one), _tables(many)
    assert a == b
    c = one["counts"]
    assert c["listed"] == c["accepted"] + c["duplicate"] + c["rejected"]
    assert c["duplicate"] == 4 + 1  # our four and the corpus's own copy
    same = sorted(str(p) for p in media.rglob("*") if p.is_file()
                  and p.read_bytes() == png.read_bytes())
    assert len(same) == 4 and same[0] == str(media / "0-first.png")
    (kept,) = [e for e in a["examples"] if e[1][0] == same[0]]
    assert kept[1] == tuple(same)  # the canonical Example names every copy, in URI order
    assert c["decoded"] == c["listed"] - c["duplicate"]
