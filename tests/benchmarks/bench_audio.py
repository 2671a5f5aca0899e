"""Benchmark: loom's `transforms.audio.decode_audio` vs a bare loop, same run.

    .venv/bin/python tests/benchmarks/bench_audio.py [--wav 50] [--m4a 20] [--repeats 3]

Files (in memory, tests/transforms/media.py): 10 s stereo 44.1 kHz 440 Hz tones as
16-bit WAV (`make_wav`) and as AAC in M4A (`make_mp3_or_m4a`). The bare loop decodes
(WAV: `soundfile.read`; M4A: PyAV, every frame `to_ndarray`), averages the channels to
mono, resamples to the spec's rate with `soxr.resample` and computes the log-mel with
loom's own `transforms.audio.log_mel` (same parameters), so the ratio measures only
loom's overhead around the same work (sniffing, header checks, the duration cap, the
per-frame downmix, NaN scrub, the part dict with its features as a Python list).
Prints files/s per format and path and the ratio loom/bare (< 1: loom is slower).
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
import time

import av
import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from loom.schemas.spec import PreprocessingSpec  # noqa: E402
from loom.transforms.audio import decode_audio, log_mel  # noqa: E402

from tests.transforms.media import make_mp3_or_m4a, make_wav  # noqa: E402

SECONDS = 10.0


def bare_wav(data: bytes, target: int) -> np.ndarray:
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = x.mean(axis=1)
    return log_mel(soxr.resample(mono, sr, target), target)


def bare_m4a(data: bytes, target: int) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.audio[0]
        chunks, sr = [], 0
        for frame in c.decode(stream):
            sr = frame.sample_rate
            arr = frame.to_ndarray()  # fltp: (channels, n)
            chunks.append(arr.mean(axis=0) if frame.format.is_planar else
                          arr.reshape(-1, frame.layout.nb_channels).mean(axis=1))
    mono = np.concatenate(chunks).astype(np.float32, copy=False)
    return log_mel(soxr.resample(mono, sr, target), target)


def rate(fn, blobs) -> float:
    t = time.perf_counter()
    for b in blobs:
        fn(b)
    return len(blobs) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wav", type=int, default=50)
    ap.add_argument("--m4a", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    spec = PreprocessingSpec()
    sr = spec.audio_sample_rate
    t = time.perf_counter()
    # Different tones so no two files are byte-identical.
    sets = {
        "wav": [make_wav(SECONDS, freq=220.0 + 10 * i) for i in range(args.wav)],
        "m4a": [make_mp3_or_m4a(SECONDS, freq=220.0 + 10 * i)[0] for i in range(args.m4a)],
    }
    print(f"{args.wav} WAV + {args.m4a} M4A, {SECONDS:g} s stereo 44.1 kHz "
          f"({sum(map(len, sets['wav'])) / 1e6:.1f} MB + {sum(map(len, sets['m4a'])) / 1e6:.1f}"
          f" MB, made in {time.perf_counter() - t:.1f} s) -> {sr} Hz mono, log-mel; "
          f"best of {args.repeats}")
    bares = {"wav": lambda b: bare_wav(b, sr), "m4a": lambda b: bare_m4a(b, sr)}
    for kind, blobs in sets.items():  # same output on both paths
        part, _ = decode_audio(blobs[0], spec)
        ours = np.asarray(part["features"], np.float32).reshape(part["frames"], -1)
        ref = bares[kind](blobs[0])
        diff = float(np.abs(ours - ref).max()) if ours.shape == ref.shape else float("nan")
        print(f"  check {kind}: loom {ours.shape} vs bare {ref.shape}, max |diff| {diff:.2e}")
        assert ours.shape == ref.shape and diff < 1e-3
    best = {(k, p): 0.0 for k in sets for p in ("loom", "bare")}
    for _ in range(args.repeats):  # interleaved so drift hits every path alike
        for kind, blobs in sets.items():
            best[kind, "loom"] = max(best[kind, "loom"],
                                     rate(lambda b: decode_audio(b, spec), blobs))
            best[kind, "bare"] = max(best[kind, "bare"], rate(bares[kind], blobs))
    for kind in sets:
        lo, ba = best[kind, "loom"], best[kind, "bare"]
        print(f"{kind}  loom decode_audio {lo:8.1f} files/s   bare {ba:8.1f} files/s   "
              f"ratio loom/bare {lo / ba:.2f}x")


if __name__ == "__main__":
    main()
