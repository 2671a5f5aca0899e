"""Soak: ingest many small mixed files plus long media; memory, fds and throughput.

    python tests/benchmarks/soak.py --scale full    # 20,000 files + 20-min video + 2-h audio
    python tests/benchmarks/soak.py --scale small   # 2,000 files + 2-min video + 10-min audio

Generates the corpus (cheap: tiny images, short tones, one low-resolution x264 video with
an AAC track, one long 16 kHz WAV written in blocks), runs `run_ingest` on the chosen
engine and reports, as one JSON line: peak RSS of the whole process tree (this process
plus every descendant: engine workers, isolated decoders), sampled every 0.2 s; open
file descriptors of this process before and after (a leak shows as growth); and
throughput (files/s) over the first and the last 10% of decoded files, from the
per-work-item progress callbacks. tests/benchmarks/test_soak.py runs the small scale.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import random
import sys
import threading
import time
from fractions import Fraction

import av
import numpy as np
import psutil
import soundfile as sf
from PIL import Image

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

SCALES = {"small": {"files": 2000, "video_min": 2, "audio_min": 10},
          "full": {"files": 20000, "video_min": 20, "audio_min": 120}}


def make_small_files(out: str, n: int, seed: int = 0) -> dict[str, int]:
    """Mixed: PNG, JPEG, text, WAV, plus empty, truncated and duplicate files."""
    rng = random.Random(seed)
    kinds: dict[str, int] = {}
    os.makedirs(out, exist_ok=True)
    words = "red green blue circle square triangle small large top bottom left right".split()
    for i in range(n):
        r = rng.random()
        if r < 0.35:
            img = Image.new("RGB", (48, 32), tuple(rng.randrange(256) for _ in range(3)))
            img.paste(tuple(rng.randrange(256) for _ in range(3)), (rng.randrange(24), 4, 40, 20))
            buf = io.BytesIO()
            fmt = "PNG" if r < 0.2 else "JPEG"
            img.save(buf, fmt)
            name, data = f"img-{i:06d}.{fmt.lower()}", buf.getvalue()
        elif r < 0.75:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(5, 60)))
            name, data = f"doc-{i:06d}.txt", f"{text}. ({i})".encode()
        elif r < 0.93:
            t = np.arange(int(8000 * rng.uniform(0.2, 1.5))) / 8000
            buf = io.BytesIO()
            sf.write(buf, (0.3 * np.sin(2 * np.pi * rng.uniform(200, 900) * t)).astype(np.float32),
                     8000, format="WAV", subtype="PCM_16")
            name, data = f"snd-{i:06d}.wav", buf.getvalue()
        elif r < 0.96:
            name, data = f"empty-{i:06d}.txt", b""
        elif r < 0.98:
            name, data = f"dup-{i:06d}.txt", b"the same small red circle, again and again"
        else:
            img = Image.new("RGB", (48, 32), (i % 256, 0, 0))
            buf = io.BytesIO()
            img.save(buf, "PNG")
            name, data = f"cut-{i:06d}.png", buf.getvalue()[:40]
        kind = name.split("-", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
        sub = os.path.join(out, f"{i // 1000:03d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, name), "wb") as f:
            f.write(data)
    return kinds


def make_long_video(path: str, minutes: float, fps: int = 2, size=(64, 48)) -> None:
    """Low resolution, low fps H.264 with a keyframe every 10 s, plus 8 kHz mono AAC."""
    n = int(minutes * 60 * fps)
    sr = 8000
    with av.open(path, "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        vs.options = {"preset": "ultrafast", "g": str(fps * 10)}
        aus = out.add_stream("aac", rate=sr)
        aus.layout = "mono"
        frame_a = 1024
        a_total = int(minutes * 60 * sr)
        a_pos = 0
        for i in range(n):
            arr = np.full((size[1], size[0], 3), (i * 7) % 256, np.uint8)
            arr[:, : (i % size[0]), 1] = 200
            for p in vs.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(p)
            until = min(a_total, int((i + 1) / fps * sr))
            while a_pos < until:
                t = (np.arange(a_pos, a_pos + frame_a) / sr).astype(np.float32)
                af = av.AudioFrame.from_ndarray(
                    (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)[None, :],
                    format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = sr, a_pos, Fraction(1, sr)
                for p in aus.encode(af):
                    out.mux(p)
                a_pos += frame_a
        for stream in (vs, aus):
            for p in stream.encode(None):
                out.mux(p)


def make_long_wav(path: str, minutes: float, sr: int = 16000) -> None:
    """Written a minute at a time: the generator holds no more than that."""
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, format="WAV", subtype="PCM_16") as f:
        for m in range(int(np.ceil(minutes))):
            secs = min(60.0, minutes * 60 - m * 60)
            t = np.arange(int(secs * sr)) / sr
            f.write((0.25 * np.sin(2 * np.pi * (220 + m) * t)).astype(np.float32))


class TreeRSS:
    """Peak RSS summed over this process and its descendants, sampled in a thread.

    Processes already running when it starts (a Ray session an earlier test left up in
    the same pytest process, say) are not the run's and are left out.
    """

    def __init__(self, interval_s: float = 0.2):
        self.interval_s, self.peak, self.peak_procs = interval_s, 0, 0
        self.preexisting = {p.pid for p in psutil.Process().children(recursive=True)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        me = psutil.Process()
        total, procs = 0, 0
        for p in [me, *(c for c in me.children(recursive=True)
                         if c.pid not in self.preexisting)]:
            try:
                total += p.memory_info().rss
                procs += 1
            except psutil.Error:
                pass
        if total > self.peak:
            self.peak, self.peak_procs = total, procs
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _throughput(events: list[tuple[float, int]]) -> dict:
    """files/s over the first and the last 10% of decoded files, by finished work item.

    Windows run between work-item completions, so start-up (hash pass, tokenizer,
    decoder spawn) is outside both: the first item's end opens the first window.
    """
    if len(events) < 3:
        return {"decoded_files": events[-1][1] if events else 0, "work_items": len(events)}
    total, tenth = events[-1][1], max(1, events[-1][1] // 10)

    def window(i: int, j: int) -> float | None:
        (t0, n0), (t1, n1) = events[i], events[j]
        return round((n1 - n0) / (t1 - t0), 1) if t1 > t0 else None

    first_end = next(j for j, (_, n) in enumerate(events) if n - events[0][1] >= tenth)
    last_start = max(j for j, (_, n) in enumerate(events) if total - n >= tenth)
    return {"first_10pct_files_per_s": window(0, max(first_end, 1)),
            "last_10pct_files_per_s": window(min(last_start, len(events) - 2), len(events) - 1),
            "decode_pass_s": round(events[-1][0] - events[0][0], 1),
            "decoded_files": total, "work_items": len(events)}


def run_soak(workdir: str, files: int, video_min: float, audio_min: float,
             engine: str = "beam", regenerate: bool = False,
             audio_hard_limit_s: float = 3 * 3600) -> dict:
    """The hard audio limit is raised past the long file by default, so it is decoded
    (to the 30 s cap) rather than rejected `too_long` from its header."""
    from loom.pipelines import progress
    from loom.pipelines.ingest import run_ingest
    from loom.pipelines.runner import Engine
    from loom.schemas.spec import PreprocessingSpec

    media = os.path.join(workdir, "media")
    t0 = time.monotonic()
    stamp = os.path.join(workdir, "generated.json")
    want = {"files": files, "video_min": video_min, "audio_min": audio_min}
    if regenerate or not os.path.exists(stamp) or json.load(open(stamp)) != want:
        kinds = make_small_files(os.path.join(media, "small"), files)
        os.makedirs(os.path.join(media, "long"), exist_ok=True)
        make_long_video(os.path.join(media, "long", "video.mp4"), video_min)
        make_long_wav(os.path.join(media, "long", "audio.wav"), audio_min)
        with open(stamp, "w") as f:
            json.dump(want, f)
    else:
        kinds = None
    gen_s = time.monotonic() - t0
    sizes = {n: os.path.getsize(os.path.join(media, "long", n))
             for n in ("video.mp4", "audio.wav")}

    events: list[tuple[float, int]] = []
    decoded = 0
    original = progress.Progress.update

    def update(self, result):  # count decoded files as work items finish
        nonlocal decoded
        stats = result.get("stats") or {}
        n = int(stats.get("accepted_files", 0)) + int(stats.get("rejected_files", 0))
        if n:
            decoded += n
            events.append((time.monotonic(), decoded))
        return original(self, result)

    progress.Progress.update = update
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # a per-process singleton (spawn), not a leak: start it
    gc.collect()
    me = psutil.Process()
    fds_before = me.num_fds()
    out_root = os.path.join(workdir, "out")
    try:
        with TreeRSS() as rss:
            start = time.monotonic()
            result = run_ingest(media, out_root, engine=Engine(engine),
                                spec=PreprocessingSpec(audio_hard_limit_s=audio_hard_limit_s))
            elapsed = time.monotonic() - start
    finally:
        progress.Progress.update = original
    gc.collect()
    time.sleep(0.5)
    fds_after = me.num_fds()
    c = result["counts"]
    return {
        "scale": want, "engine": engine, "audio_hard_limit_s": audio_hard_limit_s,
        "generated_kinds": kinds,
        "long_media_bytes": sizes, "generate_s": round(gen_s, 1),
        "ingest_s": round(elapsed, 1), "reused": result["reused"],
        "files_per_s": round(c["listed"] / elapsed, 1) if elapsed else None,
        "counts": {k: v for k, v in c.items() if not k.startswith("bytes")},
        "peak_rss_tree_mib": round(rss.peak / 2**20, 1), "peak_rss_procs": rss.peak_procs,
        "fds_before": fds_before, "fds_after": fds_after,
        "children_after": [" ".join(p.cmdline()[-1:])[:60] for p in me.children(recursive=True)
                           if p.pid not in rss.preexisting],
        **_throughput(events),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="small")
    ap.add_argument("--workdir", default="/tmp/loom-soak")
    ap.add_argument("--engine", choices=["beam", "ray"], default="beam")
    ap.add_argument("--files", type=int)
    ap.add_argument("--video-min", type=float)
    ap.add_argument("--audio-min", type=float)
    ap.add_argument("--fresh-output", action="store_true", help="delete a previous output root")
    args = ap.parse_args()
    s = dict(SCALES[args.scale])
    s.update({k: v for k, v in (("files", args.files), ("video_min", args.video_min),
                                ("audio_min", args.audio_min)) if v is not None})
    if args.fresh_output:
        import shutil

        shutil.rmtree(os.path.join(args.workdir, "out"), ignore_errors=True)
    if args.engine == "ray":
        from loom.pipelines.ray.session import ensure_ray

        ensure_ray()
    print(json.dumps(run_soak(args.workdir, s["files"], s["video_min"], s["audio_min"],
                              args.engine)))


if __name__ == "__main__":
    main()
