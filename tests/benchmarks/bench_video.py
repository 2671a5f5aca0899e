"""Benchmark: loom's `transforms.video.decode_video` vs a bare PyAV loop, same run.

    .venv/bin/python tests/benchmarks/bench_video.py [--repeats 3] [--size 224]
        [--rss-seconds 600] [--no-rss] [--regen]

Two in-memory 60 s clips, 640x360 @ 25 fps, H.264 (tests/transforms/media.py make_video,
no audio track so both paths do only the video work): one with x264's default keyframe
interval (gop=250, a keyframe every 10 s) and one with 1 s keyframes (gop=25). Loom
decodes each in the modes smart / full / keyframes with a spec sampling 1 fps (60
targets, `video_max_frames=60`). The bare loop opens the bytes with `av.open(BytesIO)`,
decodes every frame in order, keeps the frame nearest each 1 fps target, converts it to
RGB (`frame.to_image()`) and resizes + center-crops it with Pillow (`ImageOps.fit`,
bicubic) to `size`; like loom's full mode it stops once the last target is filled.
Prints the best-of-N seconds per clip and path, and speed ratios loom/bare
(bare seconds / loom seconds: > 1 means loom is faster).

Then the peak RSS of decoding a long 1280x720 @ 25 fps clip (default 10 min, x264
default gop) in a fresh subprocess per mode: a wrapper process runs the decode in its own
child and reports `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`, so each figure covers
exactly one decode process. The clip is generated once (ultrafast, 200 kb/s, YUV frames
from a small pool) to a file in the temp folder and reused by later runs (--regen to
redo it). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction

import av
import numpy as np
from PIL import Image, ImageOps

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from loom.schemas.spec import PreprocessingSpec  # noqa: E402
from loom.transforms.pixels import part_frames  # noqa: E402
from loom.transforms.video import decode_video  # noqa: E402

from tests.transforms.media import make_video  # noqa: E402

FPS = 25
MODES = ("smart", "full", "keyframes")


def make_spec(size: int, codec: str = "jpeg") -> PreprocessingSpec:
    return PreprocessingSpec(image_size=size, video_fps=1.0, video_max_frames=60,
                             image_codec=codec)


def bare_stored(data: bytes, size: int) -> bytes:
    """The bare loop, then stored as loom stores frames: one JPEG q90 strip."""
    frames = bare(data, size)
    buf = io.BytesIO()
    Image.fromarray(frames.reshape(-1, size, 3)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bare(data: bytes, size: int, fps: float = 1.0) -> np.ndarray:
    """Decode every frame in order; the frame nearest each 1/fps target -> RGB, fit."""
    with av.open(io.BytesIO(data)) as c:
        vs = c.streams.video[0]
        tb, start = vs.time_base, vs.start_time or 0
        duration = float(vs.duration * tb) if vs.duration else c.duration / 1_000_000
        targets = [i / fps for i in range(math.ceil(duration * fps - 1e-9))]
        out, j, prev = [], 0, None

        def take(frame) -> None:
            out.append(np.asarray(ImageOps.fit(frame.to_image(), (size, size),
                                               method=Image.Resampling.BICUBIC)))

        for frame in c.decode(vs):
            t = float((frame.pts - start) * tb)
            while j < len(targets) and t >= targets[j]:
                near_prev = prev is not None and targets[j] - prev[0] <= t - targets[j]
                take(prev[1] if near_prev else frame)
                j += 1
            if j >= len(targets):
                break
            prev = (t, frame)
        while j < len(targets) and prev is not None:  # targets past the last frame
            take(prev[1])
            j += 1
    return np.stack(out)


def loom_pixels(data: bytes, spec: PreprocessingSpec, mode: str) -> np.ndarray:
    parts, meta = decode_video(data, spec, mode)
    return part_frames(parts[0])


def best_seconds(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_clips(args) -> None:
    spec = make_spec(args.size)
    clips = {}
    t0 = time.perf_counter()
    for gop in (250, 25):
        clips[gop] = make_video(60, fps=FPS, size=(640, 360), gop=gop, audio=False)
    print(f"generated 2 x 60 s 640x360 @ {FPS} fps clips in {time.perf_counter() - t0:.1f} s "
          f"({', '.join(f'gop={g}: {len(d) / 1e6:.2f} MB' for g, d in clips.items())})")
    print(f"-> {spec.video_max_frames} frames at {spec.video_fps:g} fps, "
          f"{args.size}x{args.size} RGB; best of {args.repeats} interleaved passes")
    for gop, data in clips.items():
        ref = bare(data, args.size)
        for mode in MODES:  # raw storage for the check: the frames themselves
            px = loom_pixels(data, make_spec(args.size, "raw"), mode)
            same = px.shape == ref.shape and np.array_equal(px, ref)
            print(f"  check gop={gop} loom {mode:<9} frames={len(px)} "
                  f"{'identical to bare' if same else 'differs from bare'}")
    rows = []
    for gop, data in clips.items():
        paths = {f"loom {m}": (lambda m=m, d=data: decode_video(d, spec, m)) for m in MODES}
        paths["bare full decode"] = lambda d=data: bare_stored(d, args.size)
        best = {k: math.inf for k in paths}
        for _ in range(args.repeats):  # interleaved so drift hits every path alike
            for name, fn in paths.items():
                best[name] = min(best[name], best_seconds(fn, 1))
        rows.append((gop, best))
    print()
    print(f"{'clip':<12} {'path':<18} {'seconds':>8} {'vs bare':>8}")
    for gop, best in rows:
        b = best["bare full decode"]
        for name, s in best.items():
            ratio = "" if name.startswith("bare") else f"{b / s:7.2f}x"
            print(f"gop={gop:<8} {name:<18} {s:8.3f} {ratio:>8}")
    for gop, best in rows:
        b = best["bare full decode"]
        print(f"gop={gop}: ratio loom smart / bare full-decode {b / best['loom smart']:.2f}x, "
              f"loom full / bare {b / best['loom full']:.2f}x, "
              f"loom keyframes / bare {b / best['loom keyframes']:.2f}x (speed; > 1: loom faster)")


def make_long_clip(path: pathlib.Path, seconds: int, w: int = 1280, h: int = 720,
                   pool: int = 25) -> None:
    """H.264 720p, ultrafast, 200 kb/s, x264 default gop; frames cycle through a pool
    of YUV gradients (no RGB conversion per frame, so generation stays quick)."""
    frames = []
    for k in range(pool):
        yuv = np.full((h * 3 // 2, w), 128, np.uint8)
        yuv[:h] = (np.arange(w)[None, :] // 8 + k * 4) % 256
        frames.append(av.VideoFrame.from_ndarray(yuv, format="yuv420p"))
    tmp = path.with_suffix(".part")
    with av.open(str(tmp), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "ultrafast", "b": "200k", "maxrate": "200k", "bufsize": "400k"}
        vs.codec_context.bit_rate = 200_000
        for i in range(seconds * FPS):
            f = frames[i % pool]
            f.pts, f.time_base = i, Fraction(1, FPS)
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    os.replace(tmp, path)


def rss_child(mode: str, path: str, size: int) -> None:
    """Runs in a subprocess: read the file, decode it once (or not, for 'baseline')."""
    data = pathlib.Path(path).read_bytes()
    t = time.perf_counter()
    frames = ""
    if mode != "baseline":
        _, meta = decode_video(data, make_spec(size), mode)
        frames = f" frames={meta['frames_sampled']}"
    print(f"{time.perf_counter() - t:.1f}{frames}", flush=True)


def rss_wrap(mode: str, path: str, size: int) -> None:
    """Runs in a subprocess: run one rss_child and report its peak RSS (KiB on Linux)."""
    r = subprocess.run([sys.executable, __file__, "--rss-child", mode, path,
                        "--size", str(size)], capture_output=True, text=True, check=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"{peak} {r.stdout.strip()}", flush=True)


def bench_rss(args) -> None:
    seconds = args.rss_seconds
    path = pathlib.Path(tempfile.gettempdir(), f"loom-bench-video-720p-{seconds}s.mp4")
    if args.regen or not path.exists():
        t = time.perf_counter()
        make_long_clip(path, seconds)
        print(f"\ngenerated {path} ({seconds} s 1280x720 @ {FPS} fps, "
              f"{path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t:.1f} s")
    else:
        print(f"\nreusing {path} ({path.stat().st_size / 1e6:.1f} MB; --regen to redo)")
    print(f"peak RSS of one decode_video call on it (fresh process per mode, "
          f"{make_spec(args.size).video_max_frames} frames, {args.size}px):")
    for mode in ("baseline",) + MODES:
        r = subprocess.run([sys.executable, __file__, "--rss-wrap", mode, str(path),
                            "--size", str(args.size)], capture_output=True, text=True,
                           check=True)
        peak_kib, secs, *rest = r.stdout.split()
        what = "imports + file read, no decode" if mode == "baseline" else f"decode {secs} s"
        print(f"  {mode:<10} {int(peak_kib) / 1024:7.1f} MiB   ({what}{' ' if rest else ''}"
              f"{' '.join(rest)})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rss-seconds", type=int, default=600)
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--regen", action="store_true")
    ap.add_argument("--rss-child", nargs=2, metavar=("MODE", "PATH"))
    ap.add_argument("--rss-wrap", nargs=2, metavar=("MODE", "PATH"))
    args = ap.parse_args()
    if args.rss_child:
        return rss_child(*args.rss_child, args.size)
    if args.rss_wrap:
        return rss_wrap(*args.rss_wrap, args.size)
    t = time.perf_counter()
    bench_clips(args)
    if not args.no_rss:
        bench_rss(args)
    print(f"\ntotal {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
