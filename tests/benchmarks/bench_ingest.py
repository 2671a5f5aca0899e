"""Benchmark: the ingest stage (`IngestStage.process_batch`) vs a bare loop, same files.

    .venv/bin/python tests/benchmarks/bench_ingest.py [--images 300] [--repeats 3]

The files are ~300 PNGs written to a temp folder by `jobs.corpus.generate_corpus`. The
bare loop reads the bytes, hashes them (sha256) and decodes + fits them with Pillow to the
spec's size. Prints files/s for both and the ratio stage/bare. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pathlib
import sys
import tempfile
import time

import pyarrow as pa
from PIL import Image, ImageOps

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from jobs.corpus import generate_corpus  # noqa: E402
from schemas.spec import PreprocessingSpec  # noqa: E402
from transforms.ingest import IngestConfig, IngestStage  # noqa: E402


def bare(uri: str, size: int) -> bytes:
    data = pathlib.Path(uri).read_bytes()
    hashlib.sha256(data).hexdigest()
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC).tobytes()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    spec = PreprocessingSpec()
    with tempfile.TemporaryDirectory(prefix="loom-bench-") as tmp:
        generate_corpus(tmp, args.images, 0, seed=0, bad_files=False)
        uris = sorted(str(p) for p in pathlib.Path(tmp, "media", "images").glob("*.png"))
        ids = [hashlib.sha256(pathlib.Path(u).read_bytes()).hexdigest() for u in uris]
        batch = pa.RecordBatch.from_pydict({"uri": uris, "id": ids},
                                           schema=IngestStage.input_schema)
        stage = IngestStage(IngestConfig(spec=spec))
        stage.setup()
        out = stage.process_batch(batch)
        assert out["examples"].num_rows == len(uris) and out["rejected"].num_rows == 0
        print(f"{len(uris)} PNG files ({spec.image_size}px target), best of {args.repeats}")
        best_stage = best_bare = 0.0
        for _ in range(args.repeats):
            t = time.perf_counter()
            stage.process_batch(batch)
            best_stage = max(best_stage, len(uris) / (time.perf_counter() - t))
            t = time.perf_counter()
            for u in uris:
                bare(u, spec.image_size)
            best_bare = max(best_bare, len(uris) / (time.perf_counter() - t))
    print(f"{'ingest stage':<14} {best_stage:8.1f} files/s")
    print(f"{'bare loop':<14} {best_bare:8.1f} files/s")
    print(f"ratio stage/bare {best_stage / best_bare:.2f}x")


if __name__ == "__main__":
    main()
