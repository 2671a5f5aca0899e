"""Benchmark: mining — the whole job vs a bare script; ANN recall; search-step memory.

    .venv/bin/python tests/benchmarks/bench_mine.py [--images 1500] [--texts 1500] [--repeats 3]
        [--ann-n 100000] [--rss-sizes 100000,1000000] [--skip-job] [--skip-ann] [--hnsw]

1. Job: `generate_corpus` -> `run_ingest` -> `run_synth` (offline) -> a default-size encoder
   checkpoint (EncoderConfig(): dim 128, 2 layers, out 128). `run_mine` (fresh output and
   cache: read pairs + corpus, embed on Ray Data, search, exclusions + rules, write triples
   and manifest) vs a bare script on the same inputs in the same process: load the
   checkpoint, `example_to_item` / `text_to_item`, `embed_items` (torch, all threads), and
   one FAISS IndexFlatIP search per target modality (k = search_k), nothing else. Ray
   start-up (`ensure_ray`) is timed apart. Also a re-mine with another MiningConfig (cache:
   embeds nothing).
2. ANN: `--ann-n` x 256-d clustered unit vectors (1000 centres, noise 0.6), 1000 noisy
   queries; `VectorIndex(..., "ivf")` (nlist 8 sqrt(n), nprobe 64) vs exact: recall@50 and
   speed-up from `ann_recall` (and HNSW M=32, efSearch 256 with `--hnsw`).
3. Memory: per size, a fresh subprocess fills an N x 256 float32 array (the vectors), builds
   `Candidates` (ids, groups) and runs `mine` (exact, 1000 queries, k 32) over it; RSS is
   polled every 5 ms. Reported: vectors, RSS of the per-row metadata, and peak RSS of the
   search + selection beyond vectors and metadata.
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from tests.benchmarks.peak import Peak  # noqa: E402

MiB = 1024 * 1024


def clustered(n: int, d: int, seed: int, centres: int = 1000, noise: float = 0.6,
              chunk: int = 16384, out: np.ndarray | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d), dtype=np.float32)
    x = np.empty((n, d), dtype=np.float32) if out is None else out
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        block = c[rng.integers(0, centres, m)] + noise * rng.standard_normal((m, d), dtype=np.float32)
        x[s : s + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x


def job(args) -> None:
    import faiss
    import torch
    from loom.jobs.corpus import generate_corpus
    from loom.models.checkpoint import load_checkpoint, save_checkpoint
    from loom.models.embed import embed_items
    from loom.models.encoder import MultimodalEncoder
    from loom.pipelines.ingest import run_ingest
    from loom.pipelines.mine import run_mine
    from loom.pipelines.ray.session import ensure_ray
    from loom.pipelines.synth import run_synth
    from loom.pipelines.train import TrainConfig, encoder_for
    from loom.schemas import manifest as mf
    from loom.schemas import storage
    from loom.schemas.spec import SPEC_FILE, PreprocessingSpec
    from loom.schemas.splits import split_for
    from loom.transforms.items import example_to_item, text_to_item
    from loom.transforms.mining import MiningConfig
    from loom.transforms.tokenizer import TextTokenizer

    with tempfile.TemporaryDirectory(prefix="loom-bench-mine-") as tmp:
        t = time.perf_counter()
        generate_corpus(f"{tmp}/c", args.images, args.texts, seed=0, bad_files=False)
        ingest = run_ingest(f"{tmp}/c/media", f"{tmp}/examples")
        synth = run_synth(ingest["uri"], f"{tmp}/pairs")
        spec = PreprocessingSpec.model_validate_json(
            storage.read_bytes(storage.join(ingest["uri"], SPEC_FILE)))
        cfg = encoder_for(spec, TrainConfig())  # the demo's encoder
        torch.manual_seed(0)
        ckpt = save_checkpoint(f"{tmp}/ckpt", "run", 1, MultimodalEncoder(cfg), None, spec, cfg,
                               {}, {})
        print(f"set-up (corpus, ingest, synth, checkpoint): {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        ensure_ray()
        ray_s = time.perf_counter() - t
        mcfg = MiningConfig()
        # A Ray Data embedding job's fixed cost: actor process start, torch import, model load.
        from loom.pipelines.mine import _embed_plan
        from loom.pipelines.ray.embed import embed_on_ray

        ex0 = mf.read_table(*mf.resolve_input(ingest["uri"]), "examples").to_pylist()[:8]
        actors, cpus, gpus = _embed_plan()
        t = time.perf_counter()
        embed_on_ray([example_to_item(e) for e in ex0], f"{tmp}/ckpt", ckpt, None, actors=actors,
                     cpus_per_actor=cpus, gpus_per_actor=gpus)
        actor_s = time.perf_counter() - t

        def bare() -> tuple[float, int]:
            t0 = time.perf_counter()
            model = load_checkpoint(f"{tmp}/ckpt", ckpt).model
            tok = TextTokenizer.from_json(spec.tokenizer_json)
            ex = mf.read_table(*mf.resolve_input(ingest["uri"]), "examples").to_pylist()
            corpus = [e for e in ex if split_for(e["id"]).value == "train"]
            pairs = [p for p in mf.read_table(*mf.resolve_input(synth["uri"]), "pairs").to_pylist()
                     if p["split"] == "train"]
            cv = embed_items(model, [example_to_item(e) for e in corpus])
            qv = embed_items(model, [text_to_item(p["pair_id"], p["query_text"], tok,
                                                  spec.max_text_tokens) for p in pairs])
            for m in {e["modality"] for e in corpus}:
                rows = [i for i, e in enumerate(corpus) if e["modality"] == m]
                qs = [i for i, p in enumerate(pairs) if p["positive_modality"] == m]
                index = faiss.IndexFlatIP(cv.shape[1])
                index.add(cv[rows])
                index.search(qv[qs], mcfg.search_k)
            return time.perf_counter() - t0, len(corpus) + len(pairs)

        loom_s, bare_s, runs = [], [], []
        for r in range(args.repeats):  # interleaved
            b, n_items = bare()
            bare_s.append(b)
            t0 = time.perf_counter()
            out = run_mine(synth["uri"], f"{tmp}/triples-{r}", ckpt, f"{tmp}/ckpt", mcfg)
            loom_s.append(time.perf_counter() - t0)
            runs.append(out)
        t0 = time.perf_counter()
        again = run_mine(synth["uri"], f"{tmp}/triples-0", ckpt, f"{tmp}/ckpt",
                         MiningConfig(negatives=5, false_negative=("perc_pos", "margin")))
        again_s = time.perf_counter() - t0
        c = runs[0]["counts"]
        print(f"\ncorpus {c['corpus']} (train split) + {c['triples']} queries = {n_items} items "
              f"embedded; {args.images} images + {args.texts} texts; model dim 128 x 2 layers")
        print("| path | s (per repeat) | items/s (best) |\n|---|---|---|")
        print(f"| Ray start-up (`ensure_ray`, excluded) | {ray_s:.2f} | |")
        print(f"| one embedding job of 8 items (actor start + model load; inside every run) "
              f"| {actor_s:.2f} | |")
        print(f"| bare: load + forward + IndexFlatIP | {' / '.join(f'{x:.2f}' for x in bare_s)} "
              f"| {n_items / min(bare_s):.1f} |")
        print(f"| loom `run_mine` (whole job) | {' / '.join(f'{x:.2f}' for x in loom_s)} "
              f"| {n_items / min(loom_s):.1f} |")
        print(f"| loom re-mine, other config (cache: embedded {again['counts']['embedded']}, "
              f"hits {again['counts']['cache_hits']}) | {again_s:.2f} | |")
        print(f"\nloom / bare speed: **{min(bare_s) / min(loom_s):.2f}x** (best of {args.repeats}); "
              f"loom timings {runs[0]['timings']}")


def ann(args) -> None:
    from loom.transforms.search import VectorIndex, ann_recall

    xb = clustered(args.ann_n, 256, seed=1)
    rng = np.random.default_rng(2)
    q = xb[rng.choice(len(xb), 1000, replace=False)] + 0.3 * rng.standard_normal(
        (1000, 256), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    print(f"\nANN: {args.ann_n} x 256 clustered, 1000 queries, k 50")
    print("| index | build s | recall@50 | ANN q/s | exact q/s | speed-up |\n|---|---|---|---|---|---|")
    for kind in ["ivf"] + (["hnsw"] if args.hnsw else []):
        info = ann_recall(VectorIndex(xb, 0, kind), q, 50, 1000)
        print(f"| {kind} | {info['build_s']} | {info['recall@50']} | {info['ann_qps']} | "
              f"{info['exact_qps']} | {info['speedup']}x |")


def rss_child(n: int) -> None:
    import psutil
    from loom.transforms.mining import Candidates, MiningConfig, mine

    proc = psutil.Process()
    xb = clustered(n, 256, seed=3)
    rng = np.random.default_rng(4)
    pick = rng.choice(n, 1000, replace=False)
    q = xb[pick] + 0.2 * rng.standard_normal((1000, 256), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    rss0 = proc.memory_info().rss
    ids = [f"{i:09d}" for i in range(n)]
    cands = Candidates.build(ids, ["image"] * n, xb, [()] * n, ids)
    assert cands.vectors is xb or np.shares_memory(cands.vectors, xb)
    rss1 = proc.memory_info().rss
    with Peak(lambda: proc.memory_info().rss, 0.005) as peak:
        t = time.perf_counter()
        res = mine(cands, q, [str(i) for i in range(1000)], [ids[i] for i in pick],
                   ["image"] * 1000, MiningConfig(ann_threshold=10**12))
        dt = time.perf_counter() - t
    print(json.dumps({"n": n, "vectors_mib": round(xb.nbytes / MiB, 1),
                      "rss_with_vectors_mib": round(rss0 / MiB, 1),
                      "metadata_mib": round((rss1 - rss0) / MiB, 1),
                      "search_peak_beyond_mib": round((peak.value - rss1) / MiB, 1),
                      "search_s": round(dt, 2), "kept": res.counts["kept"]}))


def rss(args) -> None:
    print("\nSearch step memory (exact, 1000 queries, k 32, query chunk 1024)")
    print("| corpus | vectors MiB | metadata MiB (ids, groups) | search+select peak beyond MiB "
          "| search s |\n|---|---|---|---|---|")
    for n in [int(x) for x in args.rss_sizes.split(",") if x]:
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(n)], check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"| {n} | {r['vectors_mib']} | {r['metadata_mib']} | {r['search_peak_beyond_mib']} "
              f"| {r['search_s']} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--texts", type=int, default=1500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ann-n", type=int, default=100_000)
    ap.add_argument("--rss-sizes", default="100000,1000000")
    ap.add_argument("--rss-child", type=int)
    ap.add_argument("--skip-job", action="store_true")
    ap.add_argument("--skip-ann", action="store_true")
    ap.add_argument("--hnsw", action="store_true")
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    if not args.skip_job:
        job(args)
    if not args.skip_ann:
        ann(args)
    rss(args)


if __name__ == "__main__":
    main()
