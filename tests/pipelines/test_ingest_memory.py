"""The ingest driver holds plans, counters and manifests, never per-file Python objects
(issue 16): what it keeps per listed file (hashes, ids, outcomes) sits in Arrow columns.
Measured with tracemalloc (Python allocations only, so it is stable under load) as the
driver's peak growth per extra file between two corpus sizes: fixed costs cancel out."""

from __future__ import annotations

import tracemalloc

from loom.pipelines.ingest import run_ingest
from loom.pipelines.runner import Engine
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.tokenizer import train_tokenizer

# Old driver (dict rows, sets, the listing kept to the end): about 2 KB per file
MAX_BYTES_PER_FILE = 1000


def _corpus(root, n: int) -> str:
    media = root / "media"
    for i in range(n):
        d = media / f"d{i % 30:02d}"
        d.mkdir(parents=True, exist_ok=True)
        k = i % (n - 7)  # the last 7 files copy the first 7
        (d / f"f{i:06d}.txt").write_text(f"text number {k} about things {k * 7}")
    return str(media)


def _peak(tmp_path, name: str, n: int, spec: PreprocessingSpec) -> tuple[int, dict]:
    media = _corpus(tmp_path / name, n)
    tracemalloc.start()
    try:
        out = run_ingest(media, str(tmp_path / name / "out"), spec, engine=Engine.RAY)
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


def test_driver_memory_per_file_is_bounded(tmp_path, ray_session):
    spec = PreprocessingSpec()  # a given tokenizer: every file goes to the engine
    spec = spec.model_copy(update={"tokenizer_json": train_tokenizer(
        ["text number about things"], spec.vocab_size)})
    run_ingest(_corpus(tmp_path / "warm", 50), str(tmp_path / "warm" / "out"), spec,
               engine=Engine.RAY)  # imports and first-use set-up, outside the measure
    small, out_small = _peak(tmp_path, "small", 500, spec)
    big, out_big = _peak(tmp_path, "big", 2500, spec)
    for out, n in ((out_small, 500), (out_big, 2500)):
        counts = out["counts"]
        assert counts["listed"] == n
        assert counts["duplicate"] == 7
        assert counts["accepted"] == n - 7
    per_file = (big - small) / 2000
    print(f"driver peak {small} B at 500 files, {big} B at 2500: {per_file:.0f} B per file")
    assert per_file < MAX_BYTES_PER_FILE, f"driver grows {per_file:.0f} B per listed file"
