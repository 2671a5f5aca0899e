"""Benchmark: how decoded frames and features are stored inside Examples (bytes vs cost).

    .venv/bin/python tests/benchmarks/bench_storage.py [--images 100]

For each codec loom can store frames with (`PreprocessingSpec.image_codec`) and for raw
uint8: bytes per frame inside a zstd Parquet file of Examples, encode cost at ingest,
decode cost at training (`transforms.pixels.decode_frames`), and mean |error| vs raw, at
48 px (the demo's size) and 224 px, on the demo's shapes and on photo-like frames
(gradients + noise). Also log-mel features as float32 vs float16 in Parquet. The ratio
column is raw bytes / codec bytes. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from loom.jobs.corpus import generate_corpus  # noqa: E402
from loom.schemas.spec import PreprocessingSpec  # noqa: E402
from loom.transforms.audio import decode_audio  # noqa: E402
from loom.transforms.image import decode_image  # noqa: E402
from loom.transforms.pixels import decode_frames, encode_frames, part_frames  # noqa: E402


def photo_like(n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    return [np.clip(np.stack([(x * 3 + i * 40) % 256, (y * 2 + i) % 256, (x + y) % 256], -1)
                    + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
            for i in range(n)]


def parquet_bytes(blobs: list[bytes]) -> int:
    buf = io.BytesIO()
    pq.write_table(pa.table({"pixels": pa.array(blobs, pa.binary())}), buf, compression="zstd")
    return buf.tell()


def row(label: str, frames: list[np.ndarray]) -> None:
    size = frames[0].shape[0]
    raw_bytes = None
    for codec in ("raw", "jpeg", "webp", "png"):
        t = time.perf_counter()
        enc = [encode_frames(f[None], codec, 90) for f in frames]
        t_enc = (time.perf_counter() - t) / len(frames)
        t = time.perf_counter()
        dec = [decode_frames(b, fmt, size, size)[0] for b, fmt in enc]
        t_dec = (time.perf_counter() - t) / len(frames)
        err = np.mean([np.abs(d.astype(int) - f).mean() for d, f in zip(dec, frames, strict=True)])
        per = parquet_bytes([b for b, _ in enc]) / len(frames)
        raw_bytes = raw_bytes or per
        print(f"{label:<16} {codec:<5} {per:9.0f} B/frame  {raw_bytes / per:6.1f}x smaller  "
              f"encode {t_enc * 1e3:6.2f} ms  decode {t_dec * 1e3:6.2f} ms  |err| {err:5.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="loom-bench-") as tmp:
        generate_corpus(tmp, args.images, 0, seed=0, bad_files=False)
        pngs = sorted(pathlib.Path(tmp).rglob("*.png"))[: args.images]
        for size in (48, 224):
            spec = PreprocessingSpec(image_size=size, image_codec="raw")
            shapes = [part_frames(decode_image(p.read_bytes(), spec))[0] for p in pngs]
            row(f"shapes {size}px", shapes)
            row(f"photo-like {size}px", photo_like(min(args.images, 40), size))
    import soundfile as sf

    rng = np.random.default_rng(0)  # speech-like: noise bursts under a gliding tone
    t = np.arange(16000 * 10) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    wave = wave + 0.05 * rng.normal(size=t.size)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), 16000, format="WAV")
    part, _ = decode_audio(buf.getvalue(), PreprocessingSpec())
    feats = np.asarray(part["features"], dtype=np.float32)
    sizes = {}
    for dtype in (pa.float32(), pa.float16()):
        buf = io.BytesIO()
        arr = pa.array([feats.astype(dtype.to_pandas_dtype())], pa.list_(dtype))
        pq.write_table(pa.table({"features": arr}), buf, compression="zstd")
        sizes[str(dtype)] = buf.tell()
    err = np.abs(feats.astype(np.float16).astype(np.float32) - feats).max()
    print(f"log-mel 10 s ({feats.size} values): float32 {sizes['float'] / 1e3:.1f} kB, "
          f"float16 {sizes['halffloat'] / 1e3:.1f} kB "
          f"({sizes['float'] / sizes['halffloat']:.1f}x smaller), max |err| {err:.4f}")


if __name__ == "__main__":
    main()
