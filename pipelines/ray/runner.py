"""Ray Data adapter: any stage in an actor pool (one stage instance per actor), any
exchange as Ray Data groupbys."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pyarrow as pa
import ray
from loom.pipelines.exchange import Exchange
from loom.pipelines.progress import progress
from loom.pipelines.ray.session import ensure_ray
from loom.pipelines.ray.sizing import actor_deadline, etl_actors, nodes, per_node
from loom.pipelines.work import StageTask, dumps
from ray.data import ActorPoolStrategy


class _StageActor:
    def __init__(self, task: StageTask):
        self.task = task
        self.stage = task.open()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A row is one input block's items (`strided_blocks`); a result row per item."""
        out = [dumps(self.task.run(self.stage, item))
               for s in batch["items"] for item in json.loads(s)]
        return {"result": np.array(out, dtype=object)}


def run_ray(task: StageTask, items: list[dict], actors: int | None = None,
            cpus_per_actor: float | None = None, min_actors: int | None = None,
            max_actors: int | None = None) -> list[dict]:
    """Each actor asks for what the stage declares (`task.resources`: CPUs, GPUs, memory;
    `cpus_per_actor` overrides the CPUs). Stages declare fractions of a CPU: on 2 CPUs,
    whole-CPU actors starve the read tasks.

    Without `actors`, the pool grows to what the nodes hold (`sizing.etl_actors`, within
    min/max). Up to MAX_BLOCKS items (or 2 per cluster CPU) get a block each, so items
    spread over every node's actors; more share those blocks (still run one at a time):
    Ray Data's driver keeps state per block (some 5 KB), which per item grew with the
    corpus."""
    ensure_ray()
    name = getattr(task.factory, "func", task.factory).__name__
    need = task.resources
    cpus = need.num_cpus if cpus_per_actor is None else cpus_per_actor
    top = actors or etl_actors(cpus, len(items), min_actors, max_actors, need.num_gpus,
                               need.memory_mb)
    extra = {"num_gpus": need.num_gpus} if need.num_gpus else {}
    if need.memory_mb:
        extra["memory"] = need.memory_mb * 2**20
    size = max(1, min(top, len(items)))
    # unsized, the pool starts with one actor per node that holds one (Ray Data spreads
    # them), then grows: grown from one, a short stage ran on a single node of a cluster
    start = size if actors else max(1, min(size, sum(
        1 for n in nodes() if per_node(n, cpus, need.num_gpus, need.memory_mb or 0))))
    results = []
    # the deadline is read from the DataContext when the Dataset is made: make it inside
    with progress(items, name) as (_, bar), actor_deadline(name, cpus, need.num_gpus,
                                                           memory_mb=need.memory_mb):
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        blocks = strided_blocks(len(items), input_blocks(len(items), cluster_cpus))
        ds = ray.data.from_items(
            [{"items": "[" + ",".join(dumps(items[i]) for i in b) + "]"} for b in blocks],
            override_num_blocks=len(blocks))  # a row per block: the blocks are ours
        ds = ds.map_batches(
            _StageActor,
            fn_constructor_args=(task,),
            batch_size=1,
            # a pool asked for by size starts whole: growing from 1 left the second
            # actor starting (decoder spawn and imports) while the first did the work
            compute=ActorPoolStrategy(min_size=start, max_size=size),
            num_cpus=cpus,
            **extra,
        )
        for row in ds.iter_rows():  # streams: the bar moves as items finish
            results.append(json.loads(row["result"]))
            bar.update(results[-1])
    return results


MAX_BLOCKS = 64
MAX_PARTITIONS = 128


def strided_blocks(items: int, blocks: int) -> list[list[int]]:
    """The item indices of each input block: block j holds items j, j + blocks, j + 2 x
    blocks, ... Items come in URI order, so the costly ones sit together (a folder of
    photos or videos); cut into consecutive runs, they filled a few blocks, and at the end
    of a pass a few actors worked through those while the rest of the pool sat idle."""
    return [list(range(j, items, blocks)) for j in range(min(blocks, items))]


def input_blocks(items: int, cpus: int) -> int:
    """Blocks for `items` work items on `cpus` CPUs: one per item up to a cap that grows
    with the cluster, not with the corpus."""
    return max(1, min(items, max(MAX_BLOCKS, 2 * cpus)))


def exchange_layout(items: int, cpus: int) -> tuple[int, int]:
    """(input blocks, partitions per groupby) for an exchange over `items` work items on
    `cpus` CPUs: both grow with the items only up to a cap that grows with the cluster."""
    blocks = input_blocks(items, cpus)
    parts = min(items, max(2 * cpus, min(-(-items // 8), MAX_PARTITIONS)))
    return blocks, parts


_PAIRS = pa.schema([("key", pa.string()), ("value", pa.binary())])


def _pairs(out) -> pa.Table:
    keys, values = zip(*out, strict=True) if out else ((), ())
    return pa.table([pa.array(keys, pa.string()), pa.array(values, pa.binary())], schema=_PAIRS)


def _map_item(exchange: Exchange, batch: dict[str, np.ndarray]) -> pa.Table:
    return _pairs([kv for s in batch["item"] for kv in exchange.map(json.loads(s))])


def _reduce_group(reduce, group: pa.Table) -> pa.Table:
    key = group.column("key")[0].as_py()
    return _pairs(list(reduce(key, group.column("value").to_pylist())))


def run_ray_exchange(exchange: Exchange, items: list[dict]) -> list[tuple[str, bytes]]:
    """The exchange as map_batches, then groupby + map_groups per reduce: the rows go
    through Ray Data's shuffle (object store, spilled to disk); the last step's (small)
    pairs stream back.

    The shuffle's driver state is a piece per (input block, partition): one block per
    item and a partition per ~8 items made it grow with the square of the items (836 MB
    of driver at 1M shard rows). So items share the input blocks of `exchange_layout`
    (still mapped one at a time) and the groupbys have a partition per ~8 items (at least
    two per CPU) up to a cap: the pieces stay under blocks x partitions whatever the
    corpus, and past the cap (1,024 items on a small cluster) a reduce task holds more
    than 8 items' worth of rows."""
    ensure_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    blocks, parts = exchange_layout(len(items), cpus)
    ds = ray.data.from_items([{"item": dumps(i)} for i in items], override_num_blocks=blocks)
    ds = ds.map_batches(partial(_map_item, exchange), batch_size=1, batch_format="numpy")
    for reduce in exchange.reduces:
        ds = ds.groupby("key", num_partitions=parts).map_groups(
            partial(_reduce_group, reduce), batch_format="pyarrow")
    return sorted((row["key"], row["value"]) for row in ds.iter_rows())
