"""Benchmark: `loom backfill` embeddings/s vs the bare model forward pass, same run.

    .venv/bin/python tests/benchmarks/bench_backfill.py [--images 600] [--texts 600] [--repeats 2]

Corpus: `jobs.corpus.generate_corpus` (PNG 96x96 + texts, no bad files). A checkpoint with
the demo's encoder (TrainConfig defaults: dim 128, 2 layers) and the corpus's own tokenizer is
saved once. Then, interleaved per repeat:

- loom: `run_backfill(media, fresh output root, run, ckpts)` end to end: ingest with the
  checkpoint's spec (decode, tokenize), Ray Data actor pool (one model per actor), parts,
  manifest. Its `timings` split ingest_s / embed_s, and embed_startup_s (job start until the
  first vectors: actor process, imports, model load, the first call); embeddings/s is counted
  over embed_s (the batch-inference part), in steady state (the rows after the first call
  over the time after it; shown as seconds for all n at that rate) and over the whole call.
- bare: the same decoded Examples (read back from that backfill's ingest version, turned into
  items with `example_to_item` beforehand) through `embed_items(model, items)` in this process:
  once with 1 torch thread and once with the default threads (what the one backfill actor
  of a 2-CPU session runs).

Engine start-up (`ensure_ray` -> `ray.init`) is timed apart and is in no rate; the actor
pool's start is in embed_s but not in the steady-state rate. Not collected
by pytest.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from loom.jobs.corpus import generate_corpus  # noqa: E402
from loom.models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from loom.models.embed import embed_items  # noqa: E402
from loom.models.encoder import MultimodalEncoder  # noqa: E402
from loom.pipelines.backfill import run_backfill  # noqa: E402
from loom.pipelines.ingest import run_ingest  # noqa: E402
from loom.pipelines.train import TrainConfig, encoder_for  # noqa: E402
from loom.schemas import manifest as mf  # noqa: E402
from loom.schemas import storage  # noqa: E402
from loom.schemas.spec import SPEC_FILE, PreprocessingSpec  # noqa: E402
from loom.transforms.items import example_to_item  # noqa: E402


def bare(model, items: list[dict], threads: int) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t = time.perf_counter()
        vecs = embed_items(model, items)
        assert vecs.shape[0] == len(items)
        return time.perf_counter() - t
    finally:
        torch.set_num_threads(before)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--texts", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="loom-bench-bf-") as tmp:
        generate_corpus(tmp, args.images, args.texts, seed=0, bad_files=False)
        media, ckpts = storage.join(tmp, "media"), storage.join(tmp, "ckpts")
        prep = run_ingest(media, storage.join(tmp, "prep"))  # the tokenizer the model carries
        spec = PreprocessingSpec.model_validate_json(
            storage.read_bytes(storage.join(prep["uri"], SPEC_FILE)))
        enc = encoder_for(spec, TrainConfig())
        torch.manual_seed(0)
        ckpt = save_checkpoint(ckpts, "bench", 1, MultimodalEncoder(enc), None, spec, enc,
                               {}, {})
        from loom.pipelines.ray.session import ensure_ray

        t = time.perf_counter()
        ensure_ray()
        startup = time.perf_counter() - t
        model = load_checkpoint(ckpts, ckpt).model
        rows = []
        for r in range(args.repeats):
            t = time.perf_counter()
            out = run_backfill(media, storage.join(tmp, f"out{r}"), "bench", ckpts)
            total = time.perf_counter() - t
            n = out["counts"]["embedded"]
            assert n == out["counts"]["examples"] and not out["reused"]
            ex_dir, ex_manifest = mf.resolve_input(
                mf.resolve_input(out["uri"])[1].lineage["examples"])
            examples = {e["id"]: e for e in mf.read_table(ex_dir, ex_manifest,
                                                          "examples").to_pylist()}
            items = [example_to_item(examples[i]) for i in sorted(examples)]
            assert len(items) == n
            b1 = bare(model, items, 1)
            bd = bare(model, items, default_threads)
            startup_s = out["timings"]["embed_startup_s"]
            # steady state: the rows after the first call, over the time after it
            steady_s = ((out["timings"]["embed_s"] - startup_s) * n
                        / (n - out["timings"]["embed_startup_rows"]))
            rows.append({"n": n, "embed_s": out["timings"]["embed_s"], "startup_s": startup_s,
                         "steady_s": steady_s,
                         "ingest_s": out["timings"]["ingest_s"], "total_s": total,
                         "bare1_s": b1, "bared_s": bd})
            print(f"repeat {r}: {rows[-1]}", flush=True)
        best = {k: min(row[k] for row in rows) for k in rows[0] if k != "n"}
        n = rows[0]["n"]
        rate = {k: n / v for k, v in best.items()}
        print(f"\nexamples: {n} ({args.images} images + {args.texts} texts), "
              f"torch default threads: {default_threads}")
        print(f"engine start-up (ray.init): {startup:.1f}s (not in any rate)")
        print("| path | seconds (best of %d) | embeddings/s |" % args.repeats)
        print("|---|---|---|")
        print(f"| loom backfill, batch inference (`timings.embed_s`) | {best['embed_s']:.2f} | "
              f"{rate['embed_s']:.1f} |")
        print(f"| loom backfill, batch inference after the actor pool is up | "
              f"{best['steady_s']:.2f} | {rate['steady_s']:.1f} |")
        print(f"| (actor pool start: process, imports, model load; first vectors) | "
              f"{best['startup_s']:.2f} | - |")
        print(f"| loom backfill, whole call (ingest + embed + write) | {best['total_s']:.2f} | "
              f"{rate['total_s']:.1f} |")
        print(f"| (of which ingest: decode + tokenize) | {best['ingest_s']:.2f} | - |")
        print(f"| bare `embed_items`, 1 torch thread | {best['bare1_s']:.2f} | "
              f"{rate['bare1_s']:.1f} |")
        print(f"| bare `embed_items`, {default_threads} torch threads | {best['bared_s']:.2f} | "
              f"{rate['bared_s']:.1f} |")
        print(f"\nratio embed_s / bare(1 thread): {rate['embed_s'] / rate['bare1_s']:.2f}x")
        print(f"ratio embed_s / bare({default_threads} threads): "
              f"{rate['embed_s'] / rate['bared_s']:.2f}x")
        print(f"ratio steady / bare({default_threads} threads): "
              f"{rate['steady_s'] / rate['bared_s']:.2f}x")
        print(f"ratio steady / bare(1 thread): {rate['steady_s'] / rate['bare1_s']:.2f}x")
        print(f"ratio whole call / bare({default_threads} threads): "
              f"{rate['total_s'] / rate['bared_s']:.2f}x")


if __name__ == "__main__":
    main()
