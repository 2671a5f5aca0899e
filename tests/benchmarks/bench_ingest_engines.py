"""Benchmark: ingest on the engines (1 vs 2 workers), and the whole `loom ingest` against
the sum of its bare parts, with every file read counted.

    .venv/bin/python tests/benchmarks/bench_ingest_engines.py [--files 2000] [--jpegs 0] [--repeats 2] [--workers 1 2] [--no-ray] [--no-whole]

Corpus: `jobs.corpus.generate_corpus` (75% PNG 96x96, 25% text, its few bad files) in
a temp dir; with `--jpegs N`, N of the files are photo-sized JPEGs (640x480 q85, noise
and shapes: bench_image_decode's) and the rest keep that mix. The default corpus's files
cost ~0.2 ms each to decode, so at 10,000 files the engines' fixed costs (pipeline start,
decoder processes) outweigh the work being scaled; photos are what a real bucket's
images cost.

- Scaling: the decode pass as `run_ingest` runs it (URIs only: the stage hashes the
  one read; size-grouped items of 64; tokenizer trained beforehand), through
  `pipelines.runner.run_stage` on Beam (DirectRunner, multi_threading, workers=1 and 2)
  and Ray Data (actors=1 and 2), isolation on. 1 and 2 are interleaved, best of N.
  `--workers 1 4 8 16` measures those counts instead (a bigger machine), each against 1;
  Ray then starts with as many CPUs as the largest count.
- Whole ingest: `run_ingest(Engine.BEAM)` (defaults: 2 workers) from the listing to
  the manifest, against the bare parts done one after another in this process: read
  every file (`Path.read_bytes`), sha256, decode (bench_ingest's bare loop: Pillow +
  `ImageOps.fit` + JPEG q90, or NFC + tokenizer), write the outputs as one zstd Parquet
  file. Reads are counted in every process (`read_counter`: an audit hook on `open`).

The last lines are always `scaling beam 2/1 X.XXx` and `scaling ray 2/1 X.XXx` (ray
`n/a` with --no-ray, both `n/a` when 2 is not among --workers); the other counts' lines
(`scaling beam N/1`) come just before them. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import sys
import tempfile
import time
from functools import partial

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from read_counter import ReadCounter  # noqa: E402

READS = ReadCounter()  # before any worker process starts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000, help="corpus size (75%% PNG, 25%% text)")
    ap.add_argument("--jpegs", type=int, default=0, help="of --files, JPEG 640x480 photos")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="worker (Beam) and actor (Ray) counts; each is compared with 1")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--no-whole", action="store_true")
    args = ap.parse_args()
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loom-bench-eng-") as tmp:
        READS.install(tmp)
        from loom.jobs.corpus import generate_corpus

        rest = args.files - args.jpegs
        generate_corpus(tmp, rest * 3 // 4, rest - rest * 3 // 4, seed=0)
        media = pathlib.Path(tmp, "media")
        if args.jpegs:
            from bench_image_decode import write_jpegs

            write_jpegs(media / "jpegs", args.jpegs)
        files = sorted(p for p in media.rglob("*") if p.is_file())
        out: list[tuple[str, str, str]] = []
        print(f"{len(files)} files ({rest * 3 // 4} PNG 96x96 + {rest - rest * 3 // 4} text + "
              f"{args.jpegs} JPEG 640x480 + bad files), best of {args.repeats}")
        if not args.no_whole:
            out += whole_vs_bare(media, tmp, files)
        counts = sorted({1, *args.workers})
        scaling, rows = engines(media, tmp, files, args.repeats, not args.no_ray, counts)
        out += rows
    w = max(len(p) for p, _, _ in out)
    print(f"{'path':<{w}} {'s':>7} {'files/s':>8}")
    for p, s, fps in out:
        print(f"{p:<{w}} {s:>7} {fps:>8}")
    print(f"total wall {time.perf_counter() - t_all:.1f} s")
    for w in counts[1:]:
        if w != 2:
            for engine in ("beam", "ray"):
                if (engine, w) in scaling:
                    print(f"scaling {engine} {w}/1 {scaling[engine, w]:.2f}x")
    for engine in ("beam", "ray"):
        ratio = f"{scaling[engine, 2]:.2f}x" if (engine, 2) in scaling else "n/a"
        print(f"scaling {engine} 2/1 {ratio}")


def whole_vs_bare(media: pathlib.Path, tmp: str, files: list[pathlib.Path]
                  ) -> list[tuple[str, str, str]]:
    from bench_ingest import cpu_seconds
    from loom.pipelines.ingest import run_ingest
    from loom.pipelines.runner import Engine

    n = len(files)
    mark = READS.mark()
    t, c = time.perf_counter(), cpu_seconds()
    res = run_ingest(str(media), f"{tmp}/whole", engine=Engine.BEAM)
    whole, whole_cpu = time.perf_counter() - t, cpu_seconds() - c
    reads = READS.counts(mark)
    per_file = [reads.get(str(p), 0) for p in files]
    c = cpu_seconds()
    parts, bare_reads = bare_parts(files, tmp)
    bare, bare_cpu = sum(parts.values()), cpu_seconds() - c
    rows = [("whole run_ingest(Engine.BEAM), 2 workers", f"{whole:.2f}", f"{n / whole:.1f}"),
            ("  its CPU time (driver + decoder processes)", f"{whole_cpu:.2f}", "")]
    rows += [(f"  run_ingest {k}", f"{v:.2f}", "") for k, v in res["timings"].items()
             if k.endswith("_s") and k != "files_per_s"]
    rows += [(f"bare {k}", f"{v:.2f}", "") for k, v in parts.items()]
    rows.append(("bare parts, sum (1 core)", f"{bare:.2f}", f"{n / bare:.1f}"))
    print(f"run_ingest counts: listed {res['counts']['listed']}, accepted "
          f"{res['counts']['accepted']}, duplicate {res['counts']['duplicate']}, rejected "
          f"{res['counts']['rejected']}")
    print(f"reads by run_ingest: {sum(per_file)} opens of {n} files; max per file "
          f"{max(per_file)}; files read twice or more: {sum(1 for r in per_file if r > 1)}; "
          f"never read: {sum(1 for r in per_file if r == 0)}")
    print(f"reads by the bare parts: {sum(bare_reads.get(str(p), 0) for p in files)}")
    print(f"ratio ingest/bare-parts {whole / bare:.2f}x wall (2 workers vs 1 core), "
          f"{whole_cpu / bare_cpu:.2f}x CPU time (bare parts {bare_cpu:.2f} CPU-s incl. "
          "the tokenizer's training)")
    return rows


def bare_parts(files: list[pathlib.Path], tmp: str) -> tuple[dict[str, float], dict]:
    """read + hash + decode + write, each timed over the whole corpus, on one core."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from bench_ingest import bare_decode
    from loom.schemas.spec import PreprocessingSpec
    from loom.transforms.tokenizer import TextTokenizer, train_tokenizer

    spec = PreprocessingSpec()
    texts = [p.read_text(errors="replace") for p in files if p.suffix == ".txt"][:5000]
    spec = spec.model_copy(update={"tokenizer_json": train_tokenizer(texts, spec.vocab_size)})
    tok = TextTokenizer.from_json(spec.tokenizer_json)
    mark = READS.mark()
    parts: dict[str, float] = {}
    t = time.perf_counter()
    blobs = [p.read_bytes() for p in files]
    parts["read"] = time.perf_counter() - t
    reads = READS.counts(mark)
    t = time.perf_counter()
    ids = [hashlib.sha256(b).hexdigest() for b in blobs]
    parts["hash"] = time.perf_counter() - t
    t = time.perf_counter()
    decoded = []
    for p, b in zip(files, blobs, strict=True):
        try:
            decoded.append(bare_decode(str(p), b, spec, tok))
        except Exception:  # noqa: BLE001 - the corpus's bad files
            decoded.append(None)
    parts["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    table = pa.table({"id": ids, "uri": [str(p) for p in files],
                      "out": [d if isinstance(d, bytes) else repr(d).encode() for d in decoded]})
    pq.write_table(table, f"{tmp}/bare.parquet", compression="zstd")
    parts["write"] = time.perf_counter() - t
    return parts, reads


def engines(media: pathlib.Path, tmp: str, files: list[pathlib.Path], repeats: int,
            ray_too: bool, counts: list[int]
            ) -> tuple[dict[tuple[str, int], float], list[tuple[str, str, str]]]:
    from loom.pipelines.ingest_once import size_grouped_items
    from loom.pipelines.runner import Engine, StageTask, merge_results, run_stage
    from loom.schemas.spec import PreprocessingSpec
    from loom.transforms.ingest import IngestConfig, IngestStage
    from loom.transforms.tokenizer import train_tokenizer

    spec = PreprocessingSpec()
    texts = [p.read_text(errors="replace") for p in files if p.suffix == ".txt"][:5000]
    spec = spec.model_copy(update={"tokenizer_json": train_tokenizer(texts, spec.vocab_size)})
    rows = [{"uri": str(p)} for p in files]
    items = size_grouped_items(rows, {str(p): p.stat().st_size for p in files}, 64)
    factory = partial(IngestStage, IngestConfig(spec=spec, allowed_roots=(str(media),)))
    n = len(files)

    from bench_ingest import cpu_seconds

    best: dict[str, float] = {}

    def run(engine: Engine, key: str, r: int, **opts) -> float:
        task = StageTask(factory, f"{tmp}/out/{key}-r{r}")
        t, c = time.perf_counter(), cpu_seconds()
        _, stats = merge_results(run_stage(engine, task, items, **opts))
        dt = time.perf_counter() - t
        if engine == Engine.BEAM:  # Ray's workers are not this process's children
            best[f"{key} cpu"] = min(best.get(f"{key} cpu", 1e9), cpu_seconds() - c)
        if stats.get("accepted_files", 0) + stats.get("rejected_files", 0) < n * 0.99:
            raise SystemExit(f"{key}: {stats}")
        return dt

    for r in range(repeats):  # interleaved: drift hits every count alike
        for w in counts:
            dt = run(Engine.BEAM, f"beam-w{w}", r, workers=w)
            best[f"beam {w}"] = min(best.get(f"beam {w}", 1e9), dt)
    out = [(f"Beam DirectRunner workers={w}, decode pass", f"{best[f'beam {w}']:.2f}",
            f"{n / best[f'beam {w}']:.1f}") for w in counts]
    out += [(f"  its CPU time (workers={w})", f"{best[f'beam-w{w} cpu']:.2f}", "")
            for w in counts]
    scaling = {("beam", w): best["beam 1"] / best[f"beam {w}"] for w in counts[1:]}
    if ray_too:
        from loom.pipelines.ray.session import ensure_ray

        t = time.perf_counter()
        ensure_ray(num_cpus=counts[-1] if counts[-1] > 2 else None)
        out.append(("Ray start-up (ensure_ray/ray.init)", f"{time.perf_counter() - t:.2f}", ""))
        for r in range(repeats):
            for a in counts:
                dt = run(Engine.RAY, f"ray-a{a}", r, actors=a)
                best[f"ray {a}"] = min(best.get(f"ray {a}", 1e9), dt)
        out += [(f"Ray Data actors={a}, decode pass", f"{best[f'ray {a}']:.2f}",
                 f"{n / best[f'ray {a}']:.1f}") for a in counts]
        scaling.update({("ray", a): best["ray 1"] / best[f"ray {a}"] for a in counts[1:]})
        import ray

        ray.shutdown()
    return scaling, out


if __name__ == "__main__":
    main()
