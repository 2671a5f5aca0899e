"""Benchmark: loom's `transforms.image.decode_image` vs a bare Pillow loop, same run.

    .venv/bin/python tests/benchmarks/bench_image_decode.py [--images 300] [--repeats 3]

Not collected by pytest (the file name does not match `test_*.py`). Prints images/s for
each path and the ratio loom/bare (> 1: loom is faster; loom uses JPEG draft decoding).
"""

from __future__ import annotations

import argparse
import io
import pathlib
import random
import sys
import time
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageOps

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from loom.schemas.spec import PreprocessingSpec  # noqa: E402
from loom.transforms.image import decode_image  # noqa: E402

SIZE = 224


def make_jpegs(n: int, seed: int = 0, w: int = 640, h: int = 480) -> list[bytes]:
    return list(iter_jpegs(n, seed, w, h))


def write_jpegs(folder: pathlib.Path, n: int) -> None:
    """make_jpegs(n)'s photos as folder/photo-NNNNN.jpg, one in memory at a time."""
    folder.mkdir()
    for i, blob in enumerate(iter_jpegs(n)):
        (folder / f"photo-{i:05d}.jpg").write_bytes(blob)


def iter_jpegs(n: int, seed: int = 0, w: int = 640, h: int = 480) -> Iterator[bytes]:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    for _ in range(n):
        noise = nrng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        img = Image.fromarray(noise, "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = rng.randrange(w), rng.randrange(h)
            x1, y1 = x0 + rng.randrange(20, 300), y0 + rng.randrange(20, 300)
            fill = tuple(rng.randrange(256) for _ in range(3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        yield buf.getvalue()


def store(img: Image.Image) -> bytes:
    """What loom stores by default (PreprocessingSpec.image_codec): JPEG q90 at the target size."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bare(data: bytes, size: int = SIZE) -> bytes:
    """Open, RGB, resize the shorter side to `size`, center crop, JPEG q90."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return store(img.crop((left, top, left + size, top + size)))


def bare_draft(data: bytes, size: int = SIZE) -> bytes:
    """The bare loop plus JPEG draft mode (what loom does): the like-for-like baseline."""
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (size, size))
    img = img.convert("RGB")
    return store(ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC))


def time_loop(fn, blobs: list[bytes]) -> float:
    start = time.perf_counter()
    for b in blobs:
        fn(b)
    return len(blobs) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    spec = PreprocessingSpec(image_size=SIZE)
    blobs = make_jpegs(args.images)
    mb = sum(map(len, blobs)) / 1e6
    print(f"{len(blobs)} JPEG 640x480 ({mb:.1f} MB) -> {SIZE}x{SIZE} RGB, best of {args.repeats}")
    # Same output on all paths: one JPEG q90 of SIZE x SIZE.
    part = decode_image(blobs[0], spec)
    assert part["pixel_format"] == "jpeg" and Image.open(io.BytesIO(bare(blobs[0]))).size == (SIZE, SIZE)
    paths = {"loom decode_image": lambda b: decode_image(b, spec), "bare pillow": bare,
             "bare pillow + draft": bare_draft}
    best = {k: 0.0 for k in paths}
    for _ in range(args.repeats):  # interleaved so drift hits every path alike
        for name, fn in paths.items():
            best[name] = max(best[name], time_loop(fn, blobs))
    for name, ips in best.items():
        print(f"{name:<22} {ips:8.1f} images/s")
    print(f"ratio loom/bare         {best['loom decode_image'] / best['bare pillow']:.2f}x")
    print(f"ratio loom/bare+draft   {best['loom decode_image'] / best['bare pillow + draft']:.2f}x")


if __name__ == "__main__":
    main()
