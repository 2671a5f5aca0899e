"""Batch inference on Ray Data: one encoder per actor, GPU when the cluster has one."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import ray
import torch
from ray.data import ActorPoolStrategy

from loom.models.checkpoint import load_checkpoint
from loom.models.embed import embed_items
from loom.pipelines.ray.session import ensure_ray
from loom.schemas import storage
from loom.transforms.items import example_to_item

EXAMPLE_COLUMNS = ["id", "modality", "parts"]
ROWS_PER_CALL = 1024  # Example rows per actor call (one call's forward passes)


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


def read_examples(batch: pa.Table) -> pa.Table:
    """Ray Data task: the rows to embed of each listed Examples file, as one Arrow table."""
    tables = [storage.read_parquet([uri], columns=EXAMPLE_COLUMNS).take(take)
              for uris, takes in zip(batch.column("uris").to_pylist(),
                                     batch.column("takes").to_pylist(), strict=True)
              for uri, take in zip(uris, takes, strict=True)]
    return pa.concat_tables(tables)


class EmbedExamplesActor(EmbedActor):
    """Embeds batches of Example rows (id, modality, parts) read by `read_examples`."""

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        items = [example_to_item(e) for e in batch.to_pylist()]
        return {"id": np.array([it["id"] for it in items], dtype=object),
                "vector": embed_items(self.model, items, self.dim)}


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


def embed_files_on_ray(work: list[tuple[str, list[int]]], root: str, ckpt_id: str,
                       dim: int | None = None, actors: int = 1, cpus_per_actor: float = 1.0,
                       gpus_per_actor: float = 0.0, rows_per_call: int | None = None
                       ) -> Iterator[tuple[list[str], np.ndarray]]:
    """Streams (ids, vectors) per actor call as the actors finish them, in no promised order.

    `work` is (Example Parquet URI, row numbers to embed) per file. Two operators in one
    Ray Data job: reading tasks (one at a time, each over consecutive files of about
    `rows_per_call` rows, with no CPU reserved so they run beside the actors and overlap
    their forward passes) turn file names into Example rows; the actor pool embeds them in
    calls of `rows_per_call` rows. The pool starts and loads the model once per job, and
    nothing but file names, row numbers, ids and vectors passes through the driver."""
    ensure_ray()
    rows_per_call = rows_per_call or ROWS_PER_CALL
    groups: list[dict] = []  # consecutive files, about rows_per_call rows: one read task
    for uri, take in work:
        if not take:
            continue
        if not groups or sum(map(len, groups[-1]["takes"])) >= rows_per_call:
            groups.append({"uris": [], "takes": []})
        groups[-1]["uris"].append(uri)
        groups[-1]["takes"].append(take)
    if not groups:
        return
    ds = ray.data.from_items(groups, override_num_blocks=len(groups))
    ds = ds.map_batches(read_examples, batch_size=1, batch_format="pyarrow", num_cpus=0,
                        concurrency=1)
    ds = ds.map_batches(EmbedExamplesActor,
                        fn_constructor_args=(root, ckpt_id, dim, max(1, int(cpus_per_actor))),
                        batch_size=rows_per_call, batch_format="pyarrow",
                        compute=ActorPoolStrategy(min_size=1, max_size=actors),
                        num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield list(batch["id"]), np.asarray(batch["vector"], dtype=np.float32)


def embed_plan() -> tuple[int, float, float]:
    """(actors, CPUs, GPUs per actor), each actor fitting on one node (see sizing)."""
    from loom.pipelines.ray.sizing import embed_plan as plan

    return plan()
