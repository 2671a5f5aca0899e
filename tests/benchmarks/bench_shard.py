"""Benchmark: `run_shard` on one engine: files it leaves under the version, driver memory, wall.

    .venv/bin/python tests/benchmarks/bench_shard.py --engine ray --workdir DIR \
        [--pairs 20000] [--files 40] [--rows-per-shard 512] [--json OUT]

Builds (once per workdir) an examples version of 2,000 Examples (text and 8x8 images) and
a pairs version of `--pairs` rows in `--files` Parquet files, then shards it with weights
(image x2, question x0.5). Reports the files under the shard version just before `_work`
is cleaned (what a run leaves on the bucket: joined rows, intermediates, shards), the
driver's peak tracemalloc (Python objects) and sampled peak USS (private memory: on the
DirectRunner the Beam workers are threads of the driver, so it counts them too), the
wall time, and the sha256 of every shard (to compare implementations).
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
import tracemalloc

import numpy as np
import psutil

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from loom.pipelines import shard as shard_mod  # noqa: E402
from loom.pipelines.runner import Engine  # noqa: E402
from loom.schemas import manifest as mf  # noqa: E402
from loom.schemas import storage  # noqa: E402
from loom.schemas.records import EXAMPLE, PAIR, empty_part, to_table  # noqa: E402
from loom.schemas.spec import SPEC_FILE, PreprocessingSpec  # noqa: E402
from loom.transforms.tokenizer import TextTokenizer, train_tokenizer  # noqa: E402

from tests.benchmarks.peak import Peak  # noqa: E402

WORDS = "red blue lake mountain bicycle wall photo square river tree".split()


def build(root: str, n_pairs: int, n_files: int, n_examples: int = 2000) -> str:
    pairs_root = storage.join(root, "pairs")
    if mf.newest_version(pairs_root) is not None:
        return pairs_root
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 6)) for _ in range(200)]
    tokenizer_json = train_tokenizer(texts, vocab_size=64)
    spec = PreprocessingSpec(image_size=8, patch_size=4, vocab_size=64,
                             tokenizer_json=tokenizer_json)
    tok = TextTokenizer.from_json(tokenizer_json)
    rows = []
    for i in range(n_examples):
        if i % 2:
            pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8).tobytes()
            part = empty_part("image") | {"pixels": pixels, "height": 8, "width": 8,
                                          "frames": 1}
            rows.append({"id": f"image-{i}", "modality": "image", "parts": [part],
                         "source_uris": [f"/c/{i}.png"], "mime": "image/png",
                         "size_bytes": len(pixels), "metadata": "{}"})
        else:
            text = texts[i % len(texts)]
            part = empty_part("text") | {"text": text, "tokens": tok.encode(text, 64)}
            rows.append({"id": f"text-{i}", "modality": "text", "parts": [part],
                         "source_uris": [f"/c/{i}.txt"], "mime": "text/plain",
                         "size_bytes": len(text), "metadata": "{}"})
    ex = mf.VersionWriter(storage.join(root, "examples"), "ingest", "ingest-bench")
    recs = [ex.write_part("examples", f"part-{k:05d}", to_table(rows[k:k + 500], EXAMPLE))
            for k in range(0, n_examples, 500)]
    storage.write_atomic(storage.join(ex.dir, SPEC_FILE), spec.model_dump_json().encode())
    ex.commit({"examples": recs}, {"examples": n_examples}, {}, {})
    pairs = []
    for i in range(n_pairs):
        j = int(rng.integers(0, n_examples))
        pid = f"image-{j}" if j % 2 else f"text-{j}"
        pairs.append({"pair_id": f"pair-{i:06d}", "task": "find", "kind": ["caption",
                      "question"][i % 2], "query_text": texts[i % len(texts)],
                      "query_modality": "text", "positive_id": pid,
                      "positive_modality": "image" if j % 2 else "text", "split": "train",
                      "prompt_version": "v1", "model": "offline", "backend": "offline",
                      "generation_config": "{}", "seed": 0})
    pw = mf.VersionWriter(pairs_root, "synth", "synth-bench")
    per = -(-n_pairs // n_files)
    recs = [pw.write_part("pairs", f"part-{k // per:05d}", to_table(pairs[k:k + per], PAIR))
            for k in range(0, n_pairs, per)]
    pw.commit({"pairs": recs}, {"pairs": n_pairs}, {"heldout_fraction": 0.0},
              {"examples": ex.dir})
    return pairs_root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=["beam", "ray"], required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--rows-per-shard", type=int, default=512)
    ap.add_argument("--json")
    args = ap.parse_args()
    pairs_root = build(args.workdir, args.pairs, args.files)
    out_root = storage.join(args.workdir, f"shards-{args.engine}-{time.time_ns()}")
    if args.engine == "ray":
        from loom.pipelines.ray.session import ensure_ray

        ensure_ray(num_cpus=2, object_store_mb=512)
    left: dict[str, int] = {}
    clean = shard_mod.cleanup_work

    def counting_cleanup(version_dir: str) -> None:
        files = storage.list_files(version_dir)
        left["files"] = len(files)
        left["work_files"] = sum("/_work/" in f.uri for f in files)
        clean(version_dir)

    shard_mod.cleanup_work = counting_cleanup
    proc = psutil.Process()
    base_uss = proc.memory_full_info().uss
    tracemalloc.start()
    with Peak(lambda: proc.memory_full_info().uss) as peak:
        t0 = time.perf_counter()
        res = shard_mod.run_shard(pairs_root, out_root, rows_per_shard=args.rows_per_shard,
                                  engine=Engine(args.engine),
                                  weights={"image": 2.0, "question": 0.5})
        wall = time.perf_counter() - t0
    _, traced = tracemalloc.get_traced_memory()
    manifest = mf.read_manifest(res["uri"])
    report = {"engine": args.engine, "pairs": args.pairs, "input_files": args.files,
              "rows": res["counts"]["rows"], "shards": res["counts"]["shards"],
              "files_before_cleanup": left.get("files"), "work_files": left.get("work_files"),
              "driver_tracemalloc_peak_mb": round(traced / 2**20, 1),
              "driver_uss_peak_mb": round(peak.value / 2**20, 1),
              "driver_uss_growth_mb": round((peak.value - base_uss) / 2**20, 1),
              "wall_s": round(wall, 1), "timings": res.get("timings"),
              "shard_sha256": [f.sha256 for f in manifest.tables["shards"]]}
    text = json.dumps(report, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "shard_sha256"}))
    if args.json:
        pathlib.Path(args.json).write_text(text)
    sys.stdout.flush()
    os._exit(0)  # skip Ray's slow atexit shutdown


if __name__ == "__main__":
    main()
