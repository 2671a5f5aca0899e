"""Batch inference on Ray Data: one encoder per actor, GPU when the cluster has one."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray
import torch
from ray.data import ActorPoolStrategy

from models.checkpoint import load_checkpoint
from models.embed import embed_items
from pipelines.ray.session import ensure_ray


class EmbedActor:
    """Loads the checkpoint once (in __init__), then embeds batches of ITEM rows."""

    def __init__(self, root: str, ckpt_id: str, dim: int | None = None, threads: int = 1):
        torch.set_num_threads(threads)
        self.model = load_checkpoint(root, ckpt_id).model
        if torch.cuda.is_available():  # Ray set CUDA_VISIBLE_DEVICES for a num_gpus actor
            self.model = self.model.cuda()
        self.dim = dim

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        items = batch.column("item").to_pylist()
        vecs = embed_items(self.model, items, self.dim)
        return {"id": np.array([it["id"] for it in items], dtype=object),
                "vector": vecs}


def embed_on_ray(items: list[dict], root: str, ckpt_id: str, dim: int | None = None,
                 actors: int = 1, batch_size: int = 256,
                 cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0
                 ) -> tuple[list[str], np.ndarray]:
    """Ids and vectors in input order. Each actor reserves `cpus_per_actor` CPUs (and runs
    that many torch threads) and `gpus_per_actor` GPUs (its model then runs on one)."""
    ensure_ray()
    if not items:
        return [], np.zeros((0, dim or 1), dtype=np.float32)
    ds = ray.data.from_arrow(pa.table({"item": items}))
    ds = ds.map_batches(EmbedActor,
                        fn_constructor_args=(root, ckpt_id, dim, max(1, int(cpus_per_actor))),
                        batch_size=batch_size, batch_format="pyarrow",
                        compute=ActorPoolStrategy(min_size=1, max_size=actors),
                        num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)
    rows = ds.take_all()
    by_id = {r["id"]: np.asarray(r["vector"], dtype=np.float32) for r in rows}
    ids = [it["id"] for it in items]
    return ids, np.stack([by_id[i] for i in ids])


def embed_plan() -> tuple[int, float, float]:
    """(actors, CPUs, GPUs per actor): one actor per GPU when the cluster has GPUs; otherwise
    actors of up to 8 CPUs that together take the cluster's CPUs (on a 2-core machine, one
    actor with 2 torch threads, as a plain script would run)."""
    ensure_ray()
    res = ray.cluster_resources()
    cpus, gpus = max(1, int(res.get("CPU", 1))), int(res.get("GPU", 0))
    if gpus:
        return gpus, float(max(1, min(8, cpus // gpus - 1))), 1.0
    actors = max(1, cpus // 8)
    return actors, float(cpus // actors), 0.0
