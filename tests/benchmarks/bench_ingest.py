"""Benchmark: the ingest stage (`IngestStage.process_batch`) vs a bare loop, same files.

    .venv/bin/python tests/benchmarks/bench_ingest.py [--files 500] [--repeats 3] [--profile]
    (or the mix by hand: --images 300 --jpegs 100 --texts 100)

A mixed set in a temp folder: PNGs (96x96) and texts from `jobs.corpus.generate_corpus`,
plus JPEG 640x480 (noise + shapes, q85). Three paths, interleaved, best of N:

- bare loop: read bytes, sha256, pick the decoder by extension, Pillow open (+ `draft`
  for JPEG, as loom does) + RGB + `ImageOps.fit` bicubic + JPEG q90 re-encode, or UTF-8 decode + NFC + cap +
  `transforms.tokenizer` encode (the same trained tokenizer the stage uses);
- loom, isolation ON (the default): decode in the persistent worker process;
  `stage.setup()` runs before timing and its time (worker spawn + imports) is printed
  separately;
- loom, isolation OFF (`IngestConfig(..., isolate=False)`): decode in-process.

The stage gets URIs only, as `run_ingest` gives them: it hashes the one read that also
decodes (the bare loop's sha256). `--profile` adds a cProfile of the in-process stage's
top functions. Prints files/s per path; the last two lines are always
`ratio isolated/bare X.XXx` and `ratio in-process/bare X.XXx` (files/s, wall clock);
the line above them gives the same ratios per CPU-second (this process and its decoder
process), which the machine's load disturbs less. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import pathlib
import pstats
import sys
import tempfile
import time
import unicodedata

import psutil
import pyarrow as pa
from PIL import Image, ImageOps

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench_image_decode import write_jpegs  # noqa: E402
from loom.jobs.corpus import generate_corpus  # noqa: E402
from loom.schemas.spec import PreprocessingSpec  # noqa: E402
from loom.transforms.ingest import IngestConfig, IngestStage  # noqa: E402
from loom.transforms.tokenizer import TextTokenizer, train_tokenizer  # noqa: E402


def bare(uri: str, spec: PreprocessingSpec, tok: TextTokenizer):
    data = pathlib.Path(uri).read_bytes()
    hashlib.sha256(data).hexdigest()
    return bare_decode(uri, data, spec, tok)


def bare_decode(uri: str, data: bytes, spec: PreprocessingSpec, tok: TextTokenizer):
    """The decoder picked by extension, the output stored as loom stores it."""
    ext = uri.rsplit(".", 1)[-1].lower()
    if ext == "txt":
        text = unicodedata.normalize("NFC", data.decode("utf-8"))[: spec.max_text_chars]
        return tok.encode(text, spec.max_text_tokens)
    img = Image.open(io.BytesIO(data))
    if ext in ("jpg", "jpeg"):
        img.draft("RGB", (spec.image_size, spec.image_size))
    img = img.convert("RGB")
    size = (spec.image_size, spec.image_size)
    buf = io.BytesIO()  # stored as loom stores it by default: JPEG q90 at the target size
    ImageOps.fit(img, size, method=Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=500,
                    help="corpus size: 60%% PNG 96x96, 20%% JPEG 640x480, 20%% text")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--jpegs", type=int, default=None)
    ap.add_argument("--texts", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    args.jpegs = args.files // 5 if args.jpegs is None else args.jpegs
    args.texts = args.files // 5 if args.texts is None else args.texts
    args.images = (args.files - args.files // 5 * 2) if args.images is None else args.images
    with tempfile.TemporaryDirectory(prefix="loom-bench-") as tmp:
        generate_corpus(tmp, args.images, args.texts, seed=0, bad_files=False)
        media = pathlib.Path(tmp, "media")
        write_jpegs(media / "jpegs", args.jpegs)
        uris = sorted(str(p) for p in media.rglob("*") if p.is_file())
        texts = [p.read_text() for p in (media / "texts").glob("*.txt")]
        spec = PreprocessingSpec()
        spec = spec.model_copy(update={"tokenizer_json": train_tokenizer(texts, spec.vocab_size)})
        tok = TextTokenizer.from_json(spec.tokenizer_json)
        # URIs only, as run_ingest sends them: the stage hashes its one read
        batch = pa.RecordBatch.from_pylist([{"uri": u} for u in uris],
                                           schema=IngestStage.input_schema)
        mb = sum(pathlib.Path(u).stat().st_size for u in uris) / 1e6

        t = time.perf_counter()
        iso = IngestStage(IngestConfig(spec=spec))  # isolate=True is the default
        iso.setup()
        startup = time.perf_counter() - t
        inproc = IngestStage(IngestConfig(spec=spec, isolate=False))
        inproc.setup()
        stages = {"loom isolate=True": iso, "loom isolate=False": inproc}
        for stage in stages.values():  # warm-up + correctness
            out = stage.process_batch(batch)
            assert out["examples"].num_rows == len(uris) and out["rejected"].num_rows == 0
        for u in uris:
            bare(u, spec, tok)

        print(f"{len(uris)} files ({args.images} PNG 96x96, {args.jpegs} JPEG 640x480, "
              f"{args.texts} text; {mb:.1f} MB) -> {spec.image_size}px / "
              f"{spec.max_text_tokens} tokens, one batch, best of {args.repeats}")
        best = {"bare loop": 0.0} | {k: 0.0 for k in stages}
        cpu = dict.fromkeys(best, 0.0)  # files per CPU-second, decoder process included
        for _ in range(args.repeats):  # interleaved so drift hits every path alike
            t, c = time.perf_counter(), cpu_seconds()
            for u in uris:
                bare(u, spec, tok)
            best["bare loop"] = max(best["bare loop"], len(uris) / (time.perf_counter() - t))
            cpu["bare loop"] = max(cpu["bare loop"], len(uris) / (cpu_seconds() - c))
            for name, stage in stages.items():
                t, c = time.perf_counter(), cpu_seconds()
                stage.process_batch(batch)
                best[name] = max(best[name], len(uris) / (time.perf_counter() - t))
                cpu[name] = max(cpu[name], len(uris) / (cpu_seconds() - c))
        if args.profile:
            _profile(lambda: inproc.process_batch(batch), "loom isolate=False")
            _profile(lambda: [bare(u, spec, tok) for u in uris], "bare loop")
        iso.teardown()
        inproc.teardown()
    for name, fps in best.items():
        ratio = "" if name == "bare loop" else f"  {fps / best['bare loop']:.2f}x bare"
        per = cpu[name] / cpu["bare loop"]
        print(f"{name:<20} {fps:8.1f} files/s{ratio:<12}  {cpu[name]:8.1f} files/CPU-s"
              f"  {per:.2f}x bare per core")
    print(f"isolated worker start-up (setup(), excluded above): {startup:.2f} s")
    print(f"per core (CPU time, decoder process included): isolated/bare "
          f"{cpu['loom isolate=True'] / cpu['bare loop']:.2f}x, in-process/bare "
          f"{cpu['loom isolate=False'] / cpu['bare loop']:.2f}x")
    print(f"ratio isolated/bare {best['loom isolate=True'] / best['bare loop']:.2f}x")
    print(f"ratio in-process/bare {best['loom isolate=False'] / best['bare loop']:.2f}x")


def cpu_seconds() -> float:
    """CPU time of this process and its children, live or ended (decoder processes;
    not Ray's workers, which are the raylet's): under load, a steadier measure of the
    work done than wall time."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:4])  # user, system, and of children waited for
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:4])
        except psutil.NoSuchProcess:
            pass
    return total


def _profile(fn, name: str, top: int = 25) -> None:
    prof = cProfile.Profile()
    prof.runcall(fn)
    print(f"--- cProfile: {name} (tottime, top {top})")
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(top)


if __name__ == "__main__":
    main()
