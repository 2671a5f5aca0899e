"""The one Ray adapter of the model seam (models.handler): batch inference on Ray Data.

`EmbedActor` loads the handler's checkpoint once per actor (GPU when the actor has one)
and embeds each batch: ITEM rows the driver prepared, pickled ITEMs a reading task
prepared (mine: with their input digest and multiplicity, passed through to the cache
writer), or Example rows read by Ray Data tasks (backfill: only file names and row numbers
leave the driver), prepared on the actor with the checkpoint's own preprocessing.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import ray
from loom.models.handler import EncoderHandler
from loom.pipelines.ray.session import ensure_ray
from loom.schemas import storage
from loom.schemas.records import rows_of
from ray.data import ActorPoolStrategy

EXAMPLE_COLUMNS = ["id", "modality", "parts"]
ROWS_PER_CALL = 1024  # Example rows per actor call (one call's forward passes)
PASS_THROUGH = ("digest", "count")  # columns an actor hands on beside id and vector


class EmbedActor:
    """One model per actor (`handler.load()` in __init__), then `handler.embed` per batch."""

    def __init__(self, handler: EncoderHandler):
        self.handler = handler
        self.model = handler.load()

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        if "item" in batch.column_names:
            items = [r["item"] for r in rows_of(batch.select(["item"]))]
        elif "item_pickle" in batch.column_names:
            items = [pickle.loads(b) for b in batch.column("item_pickle").to_pylist()]
        else:  # Example rows: prepared here, with the checkpoint's own preprocessing
            prep = self.handler.inputs()
            items = [prep.example(e) for e in rows_of(batch)]
        return {"id": np.array([it["id"] for it in items], dtype=object),
                "vector": self.handler.embed(items, self.model)} | {
            c: batch.column(c).to_numpy(zero_copy_only=False)
            for c in PASS_THROUGH if c in batch.column_names}


def read_examples(batch: pa.Table) -> pa.Table:
    """Ray Data task: the rows to embed of each listed Examples file, as one Arrow table."""
    tables = [storage.read_parquet([uri], columns=EXAMPLE_COLUMNS).take(_rows(spans))
              for uris, spans_of in zip(batch.column("uris").to_pylist(),
                                        batch.column("spans").to_pylist(), strict=True)
              for uri, spans in zip(uris, spans_of, strict=True)]
    return pa.concat_tables(tables)


def _rows(spans: list[int]) -> np.ndarray:
    """The row numbers of [start, stop, start, stop, ...] spans."""
    return np.concatenate([np.arange(lo, hi, dtype=np.int64)
                           for lo, hi in zip(spans[::2], spans[1::2], strict=True)]
                          or [np.zeros(0, np.int64)])


def _span_rows(spans: list[int]) -> int:
    return sum(spans[1::2]) - sum(spans[::2])


def _actors(ds, handler: EncoderHandler, batch_size: int, actors: int, cpus_per_actor: float,
            gpus_per_actor: float):
    """The actor pool stage: each actor runs as many torch threads as it reserves CPUs."""
    handler = dataclasses.replace(handler, threads=max(1, int(cpus_per_actor)))
    return ds.map_batches(EmbedActor, fn_constructor_args=(handler,), batch_size=batch_size,
                          batch_format="pyarrow",
                          compute=ActorPoolStrategy(min_size=1, max_size=actors),
                          num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)


def embed_on_ray(items: list[dict], handler: EncoderHandler, actors: int = 1,
                 batch_size: int = 256, cpus_per_actor: float = 1.0,
                 gpus_per_actor: float = 0.0) -> tuple[list[str], np.ndarray]:
    """Ids and vectors of ITEMs in input order. Each actor reserves `cpus_per_actor` CPUs
    and `gpus_per_actor` GPUs (its model then runs on one)."""
    ensure_ray()
    if not items:
        return [], np.zeros((0, handler.dim or 1), dtype=np.float32)
    ds = ray.data.from_arrow(pa.table({"item": items}))
    rows = _actors(ds, handler, batch_size, actors, cpus_per_actor, gpus_per_actor).take_all()
    by_id = {r["id"]: np.asarray(r["vector"], dtype=np.float32) for r in rows}
    ids = [it["id"] for it in items]
    return ids, np.stack([by_id[i] for i in ids])


def embed_lists(lists: list[list[dict]], handler: EncoderHandler,
                what: str = "embedding") -> list[np.ndarray]:
    """Vectors for several lists of ITEMs (synth's round trip; mine and eval go through the
    embedding cache) from one Ray Data pass, actors sized per node with a start deadline. Items
    are keyed by their content digest: an item in several lists is embedded once, and one
    Example cut to other parts is another item."""
    from loom.pipelines.embed_cache import item_digest
    from loom.pipelines.ray.sizing import actor_deadline

    keys = [[item_digest(it) for it in items] for items in lists]
    unique: dict[str, dict] = {}
    for items, ks in zip(lists, keys, strict=True):
        for it, k in zip(items, ks, strict=True):
            unique.setdefault(k, it | {"id": k})
    if not unique:
        return [np.zeros((0, handler.dim or 1), dtype=np.float32) for _ in lists]
    actors, cpus, gpus = embed_plan()
    with actor_deadline(what, cpus, gpus):
        ids, vectors = embed_on_ray(list(unique.values()), handler, actors=actors,
                                    cpus_per_actor=cpus, gpus_per_actor=gpus)
    row = {k: i for i, k in enumerate(ids)}
    return [vectors[[row[k] for k in ks]] if ks else vectors[:0] for ks in keys]


def embed_files_on_ray(work: list[tuple[str, list[int]]], handler: EncoderHandler,
                       actors: int = 1, cpus_per_actor: float = 1.0,
                       gpus_per_actor: float = 0.0, rows_per_call: int | None = None
                       ) -> Iterator[tuple[list[str], np.ndarray]]:
    """Streams (ids, vectors) per actor call as the actors finish them, in no promised order.

    `work` is (Example Parquet URI, row spans to embed: [start, stop, start, stop, ...]) per
    file. Two operators in one Ray Data job: reading tasks (one at a time, each over
    consecutive files of about `rows_per_call` rows, with no CPU reserved so they run
    beside the actors and overlap their forward passes) turn file names into Example rows;
    the actor pool embeds them in calls of `rows_per_call` rows. The pool starts and loads
    the model once per job, and nothing but file names, row spans, ids and vectors passes
    through the driver (no row numbers one by one: two numbers a file that is embedded
    whole)."""
    ensure_ray()
    rows_per_call = rows_per_call or ROWS_PER_CALL
    groups: list[dict] = []  # consecutive files, about rows_per_call rows: one read task
    rows = 0
    for uri, spans in work:
        if not (n := _span_rows(spans)):
            continue
        if not groups or rows >= rows_per_call:
            groups.append({"uris": [], "spans": []})
            rows = 0
        groups[-1]["uris"].append(uri)
        groups[-1]["spans"].append(spans)
        rows += n
    if not groups:
        return
    ds = ray.data.from_items(groups, override_num_blocks=len(groups))
    ds = ds.map_batches(read_examples, batch_size=1, batch_format="pyarrow", num_cpus=0,
                        concurrency=1)
    ds = _actors(ds, handler, rows_per_call, actors, cpus_per_actor, gpus_per_actor)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield list(batch["id"]), np.asarray(batch["vector"], dtype=np.float32)


def embed_plan() -> tuple[int, float, float]:
    """(actors, CPUs, GPUs per actor), each actor fitting on one node (see sizing)."""
    from loom.pipelines.ray.sizing import embed_plan as plan

    return plan()
