"""The ingest driver holds plans, counters and manifests, never per-file Python objects
(issue 16): what it keeps per listed file (hashes, ids, outcomes) sits in Arrow columns.
Measured with tracemalloc (Python allocations only, so it is stable under load; Arrow's
buffers are not counted) as the growth per extra file, between two corpus sizes (fixed
costs cancel out), of the driver's peak over the run, of its peak while listing (the
listing is streamed to Parquet a part at a time), of what it holds while the engine
decodes (the work items are planned on the engine: the driver holds references), and
of its peak from reading the engine's per-file rows to the files table written
(resolving copies, outcomes)."""

from __future__ import annotations

import tracemalloc

import loom.pipelines.ingest as ingest
import pyarrow.parquet as pq
from loom.pipelines import ingest_listing, ingest_once, neardup
from loom.pipelines.ingest import run_ingest
from loom.pipelines.runner import Engine
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.tokenizer import train_tokenizer

# Old driver (dict rows, sets, the listing kept to the end): 1.7 KB per file for both
MAX_BYTES_PER_FILE = 1000  # now 210-380 (noisy: Ray's driver threads are traced too):
# Ray Data's driver-side state per work item (some 5 KB an item of 64 files) and the
# near-duplicate exchange's, not the listing (the same figure before and after it was
# streamed: its peak came before the engine and was lower than these)
MAX_BYTES_PER_FILE_AFTER_ENGINE = 400  # 90-200 with resolution in the driver (Arrow, not
# traced); now 310 with it on the engine: Ray Data's driver state per input block of the
# resolve exchange (8 and 40 blocks here; capped at 64, so flat at scale), no per-file rows
# Listing, and what is held while the engine decodes: planted, a listing held as a list
# gives 240 and 195 B per file; measured about 6 (one listing part at a time) and 22-58 (a
# work item's reference per 64 files, and Ray's state of the planning exchange: its driver
# threads are traced too, so the figure moves between runs)
MAX_BYTES_PER_FILE_LISTING = 40
MAX_BYTES_PER_FILE_HELD = 100
LISTING_PART_ROWS = 400  # listing parts of the test's size, so the corpora span several


def _corpus(root, n: int) -> str:
    media = root / "media"
    for i in range(n):
        d = media / f"d{i % 30:02d}"
        d.mkdir(parents=True, exist_ok=True)
        k = i % (n - 7)  # the last 7 files copy the first 7
        (d / f"f{i:06d}.txt").write_text(f"text number {k} about things {k * 7}")
    return str(media)


def _peaks(tmp_path, monkeypatch, name: str, n: int, spec: PreprocessingSpec
           ) -> tuple[int, int, tuple[int, int], dict]:
    """(the driver's peak over the run, its peak from reading the engine's per-file rows
    to the files table written, before the near-duplicate exchange, its peak while
    listing, and what it holds when the engine starts to decode)"""
    media = _corpus(tmp_path / name, n)
    read, near, seen = ingest_once.resolve, ingest.group_near_dups, {}
    stage, write_listing = ingest.run_stage, ingest_listing.write_listing

    def listing(*args, **kwargs):
        before = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        try:
            return write_listing(*args, **kwargs)
        finally:
            seen["listing"] = tracemalloc.get_traced_memory()[1]
            seen["listing_growth"] = seen["listing"] - before[0]
            seen["before_listing"] = before[1]

    def run_stage(*args, **kwargs):
        seen["held"] = tracemalloc.get_traced_memory()[0]
        return stage(*args, **kwargs)

    def read_files(*args, **kwargs):
        seen["run"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        return read(*args, **kwargs)

    def grouped(*args, **kwargs):
        seen["after"] = tracemalloc.get_traced_memory()[1]
        return near(*args, **kwargs)

    monkeypatch.setattr(ingest_once, "resolve", read_files)
    monkeypatch.setattr(ingest, "group_near_dups", grouped)
    monkeypatch.setattr(ingest, "run_stage", run_stage)
    monkeypatch.setattr(ingest_listing, "PART_ROWS", LISTING_PART_ROWS)
    # copies resolved and near-dup parts rewritten on the engine, as a large corpus's are
    # (below these constants the driver runs the same steps itself: bounded, not per file)
    monkeypatch.setattr(ingest_once, "LOCAL_MAX_FILES", 0)
    monkeypatch.setattr(neardup, "LOCAL_MAX_PARTS", 0)
    monkeypatch.setattr(ingest_listing, "write_listing", listing)
    tracemalloc.start()
    try:
        out = run_ingest(media, str(tmp_path / name / "out"), spec, engine=Engine.RAY)
        peak = max(seen["before_listing"], seen["listing"], seen["run"],
                   tracemalloc.get_traced_memory()[1])
        return peak, seen["after"], (seen["listing_growth"], seen["held"]), out
    finally:
        tracemalloc.stop()


def test_driver_memory_per_file_is_bounded(tmp_path, monkeypatch, ray_session):
    spec = PreprocessingSpec()  # a given tokenizer: every file goes to the engine
    spec = spec.model_copy(update={"tokenizer_json": train_tokenizer(
        ["text number about things"], spec.vocab_size)})
    run_ingest(_corpus(tmp_path / "warm", 50), str(tmp_path / "warm" / "out"), spec,
               engine=Engine.RAY)  # imports and first-use set-up, outside the measure
    small, small_after, small_plan, out_small = _peaks(tmp_path, monkeypatch, "small", 500,
                                                       spec)
    big, big_after, big_plan, out_big = _peaks(tmp_path, monkeypatch, "big", 2500, spec)
    for out, n in ((out_small, 500), (out_big, 2500)):
        counts = out["counts"]
        assert counts["listed"] == n
        assert counts["duplicate"] == 7
        assert counts["accepted"] == n - 7
    per_file, after = (big - small) / 2000, (big_after - small_after) / 2000
    listing, held = ((b - s) / 2000 for s, b in zip(small_plan, big_plan, strict=True))
    print(f"driver peak {small} B at 500 files, {big} B at 2500: {per_file:.0f} B per file; "
          f"after the engine {small_after}, {big_after}: {after:.0f} B per file; "
          f"listing {small_plan[0]}, {big_plan[0]}: {listing:.0f} B per file; "
          f"held while decoding {small_plan[1]}, {big_plan[1]}: {held:.0f} B per file")
    assert listing < MAX_BYTES_PER_FILE_LISTING, f"listing: {listing:.0f} B per file"
    assert held < MAX_BYTES_PER_FILE_HELD, f"held while decoding: {held:.0f} B per file"
    assert per_file < MAX_BYTES_PER_FILE, f"driver grows {per_file:.0f} B per listed file"
    assert after < MAX_BYTES_PER_FILE_AFTER_ENGINE, f"after the engine: {after:.0f} B per file"


def test_the_driver_reads_no_per_file_rows(tmp_path, monkeypatch, ray_session):
    """On the engine path (a corpus over `LOCAL_MAX_FILES`), every read of the stage's
    per-file rows, Examples and signatures happens in Ray workers: the driver process
    reads no `_work/files` part and no Examples or Rejected part (its counts per modality
    and reason come from the stage's stats)."""
    monkeypatch.setattr(ingest_once, "LOCAL_MAX_FILES", 0)
    monkeypatch.setattr(neardup, "LOCAL_MAX_PARTS", 0)
    spec = PreprocessingSpec()
    spec = spec.model_copy(update={"tokenizer_json": train_tokenizer(
        ["text number about things"], spec.vocab_size)})
    reads: list[tuple[str, list | None]] = []
    real = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda path, *a, **k: reads.append(
        (str(path), k.get("columns"))) or real(path, *a, **k))
    # 8 files an item: files of one size fill several items, so copies are decoded in
    # other items than their originals and dropped after, by the engine
    corpus = _corpus(tmp_path, 300)
    out = run_ingest(corpus, str(tmp_path / "out"), spec, engine=Engine.RAY, files_per_item=8)
    c = out["counts"]
    assert (c["listed"], c["duplicate"], c["accepted"]) == (300, 7, 293)
    assert c["decoded"] == 293 and c["examples"] == 293
    per_file = [p for p, _ in reads if "/_work/files/" in p]
    assert not per_file, per_file[:3]
    rows = [(p, cols) for p, cols in reads if "/examples/" in p or "/rejected/" in p]
    assert not rows, rows[:3]
    assert c["examples.text"] == 293 and not [k for k in c if k.startswith("rejected.")]
    # A re-ingest with one file more copies the 293 others' rows on the engine too: the
    # driver reads neither the prior version's rows nor the reused files' parts.
    (tmp_path / "media" / "zz-new.txt").write_text("a text added after the first ingest")
    reads.clear()
    again = run_ingest(corpus, str(tmp_path / "out"), spec, engine=Engine.RAY,
                       files_per_item=8)
    monkeypatch.undo()
    c2 = again["counts"]
    assert (c2["listed"], c2["decoded"], c2["reused_files"]) == (301, 1, 293)
    assert c2["examples"] == c2["examples.text"] == 294 and c2["accepted"] == 294
    per_file = [p for p, _ in reads if "/_work/files/" in p or "/_work/reused/" in p]
    assert not per_file, per_file[:3]
    rows = [(p, cols) for p, cols in reads if "/examples/" in p or "/rejected/" in p]
    assert not rows, rows[:3]
