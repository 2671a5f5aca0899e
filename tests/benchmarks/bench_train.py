"""Benchmark (issue 15, item 7): `loom train`'s step rate against a bare torch loop.

    .venv/bin/python tests/benchmarks/bench_train.py [--rows 1664 --batch 64 --chunk 16]

Same model (the demo encoder, dim 128 x 2 layers, Matryoshka 32/64/128), same batch, same
rows and the same number of torch compute threads on both sides:
- loom: the real Ray Train loop (pipelines/ray/train.fit -> _loop on one worker), reading
  and collating its seeded shard files in its prefetch thread. Ray's start-up and the
  first `--warmup` steps are left out: the rate is read from the run's metrics.parquet
  (each row's samples_per_s is rows seen / seconds since the first step, so the wall time
  between two steps, checkpoints and reports included, follows from two rows);
- bare: the same batches collated beforehand, then zero_grad, forward, Matryoshka InfoNCE,
  backward, AdamW: nothing else.
Both with a plain step and with cached batches (GradCache, `--chunk` rows per chunk); the
bare cached loop is a minimal GradCache (embed chunks without a graph, loss, re-embed each
chunk and backpropagate its cached gradient). The torch threads are the ones `fit` gives
its worker (sizing.train_worker_cpus, less the CPUs kept for the data pipeline), so the
prefetch thread's CPU is outside the comparison. Bare passes run before and after the
loom pass; the ratio is against their mean.

A shared machine's load drifts between passes, so two in-process comparisons alternate one
loom step and one bare step: loom's data path (ShardReader + TrainCollate in the prefetch
thread) + `train_step` (the loop's own step function), and `train_step` alone on the
pre-collated batches (the step's own overhead). `--no-ray` runs only these. Not collected
by pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import statistics
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from loom.models.embed import forward_groups  # noqa: E402
from loom.models.encoder import EncoderConfig, MultimodalEncoder  # noqa: E402
from loom.models.losses import ContrastiveModel, matryoshka_info_nce  # noqa: E402
from loom.pipelines.ray.train import LoopConfig, TrainCollate, train_step  # noqa: E402
from loom.pipelines.train import TrainConfig  # noqa: E402
from loom.pipelines.train_data import DataPlan, ShardReader, iter_batches  # noqa: E402
from loom.schemas import storage  # noqa: E402
from loom.schemas.records import TRAINING_ROW  # noqa: E402
from loom.schemas.spec import PreprocessingSpec  # noqa: E402

from tests.benchmarks.bench_train_data import make_rows  # noqa: E402


def _model(enc: EncoderConfig, lr: float):
    torch.manual_seed(0)
    model = ContrastiveModel(MultimodalEncoder(enc), 0.05, learn=False)
    return model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)


def bare_step(model: ContrastiveModel, opt, b, chunk: int) -> None:
    dims = tuple(model.encoder.cfg.embed_dims)
    opt.zero_grad(set_to_none=True)
    if chunk:
        _bare_cached(model, b, dims, chunk)
    else:
        q, d, temp = model(b.queries, b.rows, b.docs, b.n_docs)
        matryoshka_info_nce(q, d, b.same, temp, dims)["loss"].backward()
    opt.step()


def bare_rate(enc: EncoderConfig, batches: list, chunk: int, warmup: int, lr: float) -> float:
    """Samples/s of a bare loop over `batches` (the first `warmup` not timed)."""
    model, opt = _model(enc, lr)
    t0, rows = None, 0
    for k, b in enumerate(batches):
        if k == warmup:
            t0, rows = time.perf_counter(), 0
        bare_step(model, opt, b, chunk)
        rows += b.rows
    return rows / (time.perf_counter() - t0)


def inner_rates(enc: EncoderConfig, plan: DataPlan, tc: TrainConfig, batches: list,
                warmup: int, data_path: bool = True) -> tuple[float, float]:
    """(loom, bare) samples/s, one step of each in turn in this process (load drift hits
    both alike): loom = the loop's data path (ShardReader + TrainCollate in iter_batches'
    prefetch thread; without `data_path`, the pre-collated batches) and its train_step;
    bare = bare_step on the pre-collated batches."""
    loom_model, loom_opt = _model(enc, tc.lr)
    bare_model, bare_opt = _model(enc, tc.lr)
    dims, total = tuple(enc.embed_dims), plan.steps_per_epoch()
    collate = TrainCollate(enc, tc.max_negatives)
    spent = {"loom": 0.0, "bare": 0.0}
    rows = 0
    t_data = time.perf_counter()
    loom_batches = (iter_batches(plan.epoch(0), 0, ShardReader(plan.files), collate)
                    if data_path else iter(batches))
    for k, batch in enumerate(loom_batches):
        train_step(loom_model, loom_opt, batch, tc, k, total, dims, False,
                   contextlib.nullcontext())
        t_bare = time.perf_counter()
        bare_step(bare_model, bare_opt, batches[k], tc.cache_chunk)
        if k >= warmup:
            spent["loom"] += t_bare - t_data
            spent["bare"] += time.perf_counter() - t_bare
            rows += batch.rows
        t_data = time.perf_counter()
    return rows / spent["loom"], rows / spent["bare"]


def _bare_cached(model: ContrastiveModel, b, dims: tuple[int, ...], chunk: int) -> None:
    def pieces(groups):
        return [[(idx[s:s + chunk], {k: v[s:s + chunk] for k, v in x.items()})]
                for idx, x in groups for s in range(0, len(idx), chunk)]

    qp, dp = pieces(b.queries), pieces(b.docs)
    with torch.no_grad():
        q = torch.zeros(b.rows, enc_out(model))
        d = torch.zeros(b.n_docs, enc_out(model))
        for p in qp:
            q[p[0][0]] = model.encoder(**p[0][1])
        for p in dp:
            d[p[0][0]] = model.encoder(**p[0][1])
    q.requires_grad_(), d.requires_grad_()
    matryoshka_info_nce(q, d, b.same, model.temperature(), dims)["loss"].backward()
    for parts, grad in ((qp, q.grad), (dp, d.grad)):
        for p in parts:
            forward_groups(model.encoder, p, len(p[0][0])).backward(grad[p[0][0]])


def enc_out(model: ContrastiveModel) -> int:
    return model.encoder.cfg.out_dim


def loom_rate(enc: EncoderConfig, plan: DataPlan, tc: TrainConfig, root: str, run: str,
              warmup: int) -> tuple[float, float, float]:
    """(samples/s after `warmup` steps, mean data wait s, mean compute s) of the real loop."""
    from loom.pipelines.ray.train import METRICS, fit

    loop_config = LoopConfig(train=tc, encoder=enc, spec=PreprocessingSpec(), root=root,
                             run=run, data=plan, total_steps=plan.steps_per_epoch() * tc.epochs)
    fit(loop_config, workers=1, max_failures=0)
    rows = storage.read_parquet([storage.join(root, run, METRICS)]).to_pylist()
    rows.sort(key=lambda r: r["step"])
    seen = [tc.batch_size * r["step"] for r in rows]
    wall = [s / r["samples_per_s"] for s, r in zip(seen, rows, strict=True)]
    timed = rows[warmup:]
    rate = (seen[-1] - seen[warmup - 1]) / (wall[-1] - wall[warmup - 1])
    return (rate, statistics.mean(r["data_wait_s"] for r in timed),
            statistics.mean(r["compute_s"] for r in timed))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1664)  # 26 steps of 64
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--no-ray", dest="ray", action="store_false",
                    help="only the in-process (interleaved) comparison")
    args = ap.parse_args()
    import ray
    from loom.pipelines.ray.session import ensure_ray
    from loom.pipelines.ray.sizing import train_worker_cpus

    ensure_ray(num_cpus=2, object_store_mb=256)
    threads = max(1, int(train_worker_cpus(1)))  # what fit() gives its worker
    torch.set_num_threads(threads)
    enc = EncoderConfig(image_size=args.size)
    with tempfile.TemporaryDirectory(prefix="loom-bench-train-") as tmp:
        rows = make_rows(args.rows, args.size)
        files = []
        for i in range(0, len(rows), 256):
            files.append(f"{tmp}/shard-{i // 256:05d}.parquet")
            pq.write_table(pa.Table.from_pylist(rows[i:i + 256], schema=TRAINING_ROW),
                           files[-1])
        plan = DataPlan(files=files, rows=[pq.read_metadata(f).num_rows for f in files],
                        world=1, batch_size=args.batch, seed=0)
        collate = TrainCollate(enc, max_negatives=3)
        reader = ShardReader(files)
        batches = [collate(reader.rows(s.rows[0])) for s in plan.epoch(0)]
        results = {}
        for chunk in (0, args.chunk):
            tc = TrainConfig(epochs=1, batch_size=args.batch, bf16=False, cache_chunk=chunk,
                             checkpoint_every=100, warmup_steps=5)
            before = bare_rate(enc, batches, chunk, args.warmup, tc.lr)
            loom, wait, compute = (loom_rate(enc, plan, tc, tmp, f"bench-{chunk}", args.warmup)
                                   if args.ray else (float("nan"),) * 3)
            after = bare_rate(enc, batches, chunk, args.warmup, tc.lr)
            inner = inner_rates(enc, plan, tc, batches, args.warmup)
            step_only = inner_rates(enc, plan, tc, batches, args.warmup, data_path=False)
            results[chunk] = (loom, before, after, wait, compute, inner, step_only)
        ray.shutdown()
    print(f"{args.rows} TrainingRows (text query, {args.size}px JPEG image or text positive, "
          f"3 image negatives), batch {args.batch}, {len(batches)} steps ({args.warmup} "
          f"untimed), encoder dim {enc.dim} x {enc.layers} layers, torch threads {threads}")
    for chunk, (loom, before, after, wait, compute, inner, step_only) in results.items():
        name = f"cached (chunk {chunk})" if chunk else "plain"
        bare = (before + after) / 2
        print(f"{name:18s} loom train (Ray Train loop): {loom:7.1f} samples/s "
              f"(data wait {wait * 1e3:.1f} ms, compute {compute * 1e3:.1f} ms per step); "
              f"bare before/after: {before:7.1f} / {after:7.1f} samples/s")
        print(f"{name:18s} ratio loom/bare {loom / bare:.2f}x  (Ray Train loop)")
        print(f"{name:18s} interleaved in one process: loom data path + train_step "
              f"{inner[0]:7.1f} samples/s, bare {inner[1]:7.1f} samples/s")
        print(f"{name:18s} ratio loom/bare {inner[0] / inner[1]:.2f}x  (interleaved steps)")
        print(f"{name:18s} ratio loom/bare {step_only[0] / step_only[1]:.2f}x  (interleaved, "
              f"train_step alone on the pre-collated batches: {step_only[0]:.1f} vs "
              f"{step_only[1]:.1f} samples/s)")


if __name__ == "__main__":
    main()
