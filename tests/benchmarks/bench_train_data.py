"""Benchmark: does the trainer's data path keep up with its training step?

    .venv/bin/python tests/benchmarks/bench_train_data.py [--rows 2048] [--batch 64] [--size 48]

Writes shards of TrainingRows like the demo's (text query; image positive stored as JPEG
q90 at --size px, or a text positive; 3 image negatives each), then measures, in one
process on the local Ray session:
- data path: Ray Data `read_parquet` -> `iter_torch_batches(collate_fn=TrainCollate)`
  (JPEG decode, padding, patching, grouping; what the training loop consumes), drained
  without a model: samples/s delivered;
- step: forward + InfoNCE at every Matryoshka size + backward + AdamW on already-collated
  batches, same encoder as the demo: samples/s consumed.
ratio = data / step; above 1 the loader is not the bottleneck (with prefetch_batches=2
the two overlap, so a step waits only when the ratio drops below 1). Engine start-up
(ray.init + the first batch) is timed separately. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from loom.models.encoder import EncoderConfig, MultimodalEncoder  # noqa: E402
from loom.models.losses import ContrastiveModel, matryoshka_info_nce  # noqa: E402
from loom.pipelines.ray.train import TrainCollate  # noqa: E402
from loom.schemas.records import TRAINING_ROW  # noqa: E402
from loom.transforms.pixels import encode_frames  # noqa: E402


def make_rows(n: int, size: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)

    def image(i: str) -> dict:
        y, x = np.mgrid[0:size, 0:size]
        base = np.stack([(x * rng.integers(1, 5)) % 256, (y * rng.integers(1, 5)) % 256,
                         np.full((size, size), rng.integers(0, 255))], -1)
        frame = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
        data, fmt = encode_frames(frame[None])
        return {"id": i, "modality": "image", "tokens": [], "pixels": data, "pixel_format": fmt,
                "frames": 1, "features": None, "feature_bins": None}

    def text(i: str) -> dict:
        return {"id": i, "modality": "text",
                "tokens": rng.integers(5, 2000, int(rng.integers(8, 40))).tolist(),
                "pixels": None, "pixel_format": None, "frames": 0, "features": None,
                "feature_bins": None}

    return [{"pair_id": f"p{k}", "kind": "caption", "query": text(f"q{k}"),
             "positive": image(f"i{k}") if k % 4 else text(f"t{k}"),
             "negatives": [image(f"n{k}-{j}") for j in range(3)]} for k in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    enc = EncoderConfig(image_size=args.size)  # the demo's encoder: dim 128, 2 layers
    with tempfile.TemporaryDirectory(prefix="loom-bench-") as tmp:
        rows = make_rows(args.rows, args.size)
        files = []
        for i in range(0, len(rows), 512):
            files.append(f"{tmp}/shard-{i // 512:05d}.parquet")
            pq.write_table(pa.Table.from_pylist(rows[i:i + 512], schema=TRAINING_ROW), files[-1])
        import ray
        from loom.pipelines.ray.session import ensure_ray

        t = time.perf_counter()
        ensure_ray(num_cpus=2, object_store_mb=256)
        collate = TrainCollate(enc, max_negatives=3)
        ds = ray.data.read_parquet(files)
        first = next(iter(ds.iter_torch_batches(batch_size=args.batch, collate_fn=collate)))
        startup = time.perf_counter() - t

        best_data = 0.0
        for _ in range(2):
            t, n = time.perf_counter(), 0
            for b in ds.iter_torch_batches(batch_size=args.batch, collate_fn=collate,
                                           drop_last=True, prefetch_batches=2):
                n += b.rows
            best_data = max(best_data, n / (time.perf_counter() - t))

        torch.manual_seed(0)
        model = ContrastiveModel(MultimodalEncoder(enc), 0.05, learn=True)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batches = [collate(pa.Table.from_pylist(rows[i:i + args.batch], schema=TRAINING_ROW))
                   for i in range(0, args.batch * 4, args.batch)]

        def step(b) -> None:
            q, d, temp = model(b.queries, b.rows, b.docs, b.n_docs)
            loss = matryoshka_info_nce(q, d, b.same, temp, tuple(enc.embed_dims))["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()

        step(batches[0])  # warm-up
        t = time.perf_counter()
        for k in range(args.steps):
            step(batches[k % len(batches)])
        step_rate = args.steps * args.batch / (time.perf_counter() - t)
        ray.shutdown()
    print(f"{args.rows} TrainingRows (text query, {args.size}px JPEG image or text positive, "
          f"3 image negatives), batch {args.batch}, encoder dim {enc.dim} x {enc.layers} layers,"
          f" torch threads {torch.get_num_threads()}")
    print(f"engine start-up (ray.init + first batch): {startup:.2f} s  (first batch rows: "
          f"{first.rows})")
    print(f"data path (iter_torch_batches + TrainCollate): {best_data:8.1f} samples/s")
    print(f"training step (fwd + bwd + AdamW)           : {step_rate:8.1f} samples/s")
    print(f"ratio data / step: {best_data / step_rate:.2f}x")


if __name__ == "__main__":
    main()
