"""Benchmark: ingest's decode pass on the engines — Beam 1 vs 2 workers, and Ray.

    .venv/bin/python tests/benchmarks/bench_ingest_engines.py [--images 1500] [--texts 500] [--repeats 2] [--no-ray]

Corpus: `jobs.corpus.generate_corpus` (PNG 96x96 + texts, no bad files) in a temp dir.
`run_ingest` does not expose the engine's worker count, so this replicates its decode
pass: sha256 ids and `pick_canonical` in the driver, a tokenizer trained on the texts,
then `StageTask(partial(IngestStage, IngestConfig(spec=...)), version_dir)` over
`row_items(rows, 64)` via `pipelines.runner.run_stage(Engine.BEAM, ..., workers=N)`
(DirectRunner, multi_threading) and `run_stage(Engine.RAY, ..., actors=N)`. Isolation
is the default (each stage instance starts its own decoder worker process; that start-up
is inside every engine run). Ray start-up (`ensure_ray` -> `ray.init`) is timed apart.
One full `run_ingest(Engine.BEAM)` (hash + tokenizer + decode, default workers) is timed
for context. Prints files/s per path. Not collected by pytest.
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

from loom.jobs.corpus import generate_corpus  # noqa: E402
from loom.pipelines.ingest import run_ingest  # noqa: E402
from loom.pipelines.runner import Engine, StageTask, merge_results, row_items, run_stage  # noqa: E402
from loom.schemas import storage  # noqa: E402
from loom.schemas.spec import PreprocessingSpec  # noqa: E402
from loom.transforms.ingest import IngestConfig, IngestStage, pick_canonical  # noqa: E402
from loom.transforms.tokenizer import train_tokenizer  # noqa: E402


def decode_pass(engine: Engine, task: StageTask, items: list[dict], n: int, **opts) -> float:
    t = time.perf_counter()
    res = run_stage(engine, task, items, **opts)
    dt = time.perf_counter() - t
    tables, stats = merge_results(res)
    if stats.get("accepted_files") != n:
        rej = storage.read_parquet([storage.join(task.version_dir, f.path)
                                    for f in tables.get("rejected", [])]).to_pylist()
        raise SystemExit(f"{engine.value}: {stats}; first rejected: {rej[:3]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--texts", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    t_all = time.perf_counter()
    rows_out: list[tuple[str, str, str]] = []  # (path, time, files/s)
    with tempfile.TemporaryDirectory(prefix="loom-bench-eng-") as tmp:
        generate_corpus(tmp, args.images, args.texts, seed=0, bad_files=False)
        media = pathlib.Path(tmp, "media")
        files = sorted(p for p in media.rglob("*") if p.is_file())
        hashes = [{"uri": str(p), "size": p.stat().st_size,
                   "id": hashlib.sha256(p.read_bytes()).hexdigest()} for p in files]
        canonical, _ = pick_canonical(hashes)
        rows = [{"uri": h["uri"], "id": h["id"]} for h in canonical]
        n = len(rows)
        spec = PreprocessingSpec()
        texts = [p.read_text() for p in (media / "texts").glob("*.txt")]
        spec = spec.model_copy(update={"tokenizer_json": train_tokenizer(texts, spec.vocab_size)})
        items = row_items(rows, 64)
        factory = partial(IngestStage, IngestConfig(spec=spec))
        print(f"{len(files)} files ({args.images} PNG 96x96 + {args.texts} text), {n} canonical, "
              f"{len(items)} items of 64; decode pass, isolation on; best of {args.repeats}")

        best: dict[str, float] = {}
        for r in range(args.repeats):  # interleaved
            for w in (1, 2):
                task = StageTask(factory, f"{tmp}/out/beam-w{w}-r{r}")
                dt = decode_pass(Engine.BEAM, task, items, n, workers=w)
                best[f"beam workers={w}"] = min(best.get(f"beam workers={w}", 1e9), dt)
        for w in (1, 2):
            dt = best[f"beam workers={w}"]
            rows_out.append((f"Beam DirectRunner workers={w}", f"{dt:.2f}", f"{n / dt:.1f}"))
        scaling = best["beam workers=1"] / best["beam workers=2"]

        if not args.no_ray:
            from loom.pipelines.ray.session import ensure_ray

            t = time.perf_counter()
            ensure_ray()
            ray_init = time.perf_counter() - t
            rows_out.append(("Ray start-up (ensure_ray/ray.init)", f"{ray_init:.2f}", ""))
            for r in range(args.repeats):
                for a in (1, 2):
                    task = StageTask(factory, f"{tmp}/out/ray-a{a}-r{r}")
                    dt = decode_pass(Engine.RAY, task, items, n, actors=a)
                    key = f"ray actors={a} run {r + 1}"
                    rows_out.append((f"Ray Data actors={a} (run {r + 1})", f"{dt:.2f}",
                                     f"{n / dt:.1f}"))
                    best[key] = dt
            import ray

            ray.shutdown()

        t = time.perf_counter()
        res = run_ingest(str(media), f"{tmp}/full", engine=Engine.BEAM)
        full = time.perf_counter() - t
        tm = res.get("timings", {}) if isinstance(res, dict) else {}
        detail = ", ".join(f"{k} {v:.2f}" for k, v in tm.items()) if tm else ""
        rows_out.append(("full run_ingest, Beam default workers=2", f"{full:.2f}",
                         f"{len(files) / full:.1f}"))

    w = max(len(p) for p, _, _ in rows_out)
    print(f"{'path':<{w}} {'s':>7} {'files/s':>8}")
    for p, s, fps in rows_out:
        print(f"{p:<{w}} {s:>7} {fps:>8}")
    print(f"Beam scaling workers=2 / workers=1: {scaling:.2f}x")
    print(f"run_ingest timings: {detail}")
    print(f"total wall {time.perf_counter() - t_all:.1f} s")


if __name__ == "__main__":
    main()
