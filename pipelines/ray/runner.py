"""Ray Data adapter: any stage in an actor pool (one stage instance per actor)."""

from __future__ import annotations

import json

import numpy as np
import ray
from loom.pipelines.progress import progress
from loom.pipelines.ray.session import ensure_ray
from loom.pipelines.ray.sizing import actor_deadline, etl_actors
from loom.pipelines.work import StageTask, dumps
from ray.data import ActorPoolStrategy


class _StageActor:
    def __init__(self, task: StageTask):
        self.task = task
        self.stage = task.open()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = [dumps(self.task.run(self.stage, json.loads(s))) for s in batch["item"]]
        return {"result": np.array(out, dtype=object)}


def run_ray(task: StageTask, items: list[dict], actors: int | None = None,
            cpus_per_actor: float | None = None, min_actors: int | None = None,
            max_actors: int | None = None) -> list[dict]:
    """Each actor asks for what the stage declares (`task.resources`: CPUs, GPUs, memory;
    `cpus_per_actor` overrides the CPUs). Stages declare fractions of a CPU: on 2 CPUs,
    whole-CPU actors starve the read tasks.

    Without `actors`, the pool grows to what the nodes hold (`sizing.etl_actors`, within
    min/max), one item per block so items spread over every node's actors."""
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
    results = []
    # the deadline is read from the DataContext when the Dataset is made: make it inside
    with progress(items, name) as (_, bar), actor_deadline(name, cpus, need.num_gpus,
                                                           memory_mb=need.memory_mb):
        ds = ray.data.from_items([{"item": dumps(i)} for i in items],
                                 override_num_blocks=len(items))
        ds = ds.map_batches(
            _StageActor,
            fn_constructor_args=(task,),
            batch_size=1,
            # a pool asked for by size starts whole: growing from 1 left the second
            # actor starting (decoder spawn and imports) while the first did the work
            compute=ActorPoolStrategy(min_size=size if actors else 1, max_size=size),
            num_cpus=cpus,
            **extra,
        )
        for row in ds.iter_rows():  # streams: the bar moves as items finish
            results.append(json.loads(row["result"]))
            bar.update(results[-1])
    return results
