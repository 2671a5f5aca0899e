"""Actor and worker sizes from the cluster's nodes, read when a stage starts.

A Ray actor runs on one node, so its request must fit the largest node, never the cluster's
sum (3 one-CPU nodes cannot host a 3-CPU actor: Ray would wait forever). Counts follow the
CPUs of the nodes alive now (read at every stage, so autoscaled nodes count), and Ray Data
waits for an actor pool's first actors with a deadline, then fails naming what it asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Iterator

import ray

ACTOR_WAIT_ENV = "LOOM_ACTOR_WAIT_S"  # how long a pool may wait for its first actors
MIN_ACTORS_ENV, MAX_ACTORS_ENV = "LOOM_MIN_ACTORS", "LOOM_MAX_ACTORS"
USE_GPU_ENV = "LOOM_USE_GPU"  # "1"/"0": overrides what the cluster's resources say


class NoRoom(RuntimeError):
    """A request no node can hold, or actors that did not start within the deadline."""


@dataclasses.dataclass(frozen=True)
class Node:
    cpus: float
    gpus: float
    memory_mb: float = math.inf  # Ray's schedulable memory on the node


def nodes() -> list[Node]:
    """The alive nodes' total CPUs, GPUs and memory (nodes with no CPU or GPU are left out)."""
    from loom.pipelines.ray.session import ensure_ray

    ensure_ray()
    out = [Node(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)),
                float(n["Resources"].get("memory", 0)) / 2**20 or math.inf)
           for n in ray.nodes() if n.get("Alive")]
    return [n for n in out if n.cpus or n.gpus]


def _describe(cpus: float, gpus: float, memory_mb: float) -> str:
    return (f"{cpus:g} CPU" + (f" and {gpus:g} GPU" if gpus else "")
            + (f" and {memory_mb:g} MiB of memory" if memory_mb else ""))


def per_node(node: Node, cpus: float, gpus: float = 0.0, memory_mb: float = 0.0) -> int:
    """How many actors of that size (`cpus` > 0) one node holds: the scarcest resource
    decides (a node whose memory Ray does not report is not limited by it)."""
    fits = [node.cpus / cpus, node.gpus / gpus if gpus else math.inf,
            node.memory_mb / memory_mb if memory_mb else math.inf]
    return max(0, math.floor(min(fits) + 1e-9))


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


def check_fits(cpus: float, gpus: float = 0.0, what: str = "an actor",
               memory_mb: float = 0.0) -> None:
    """NoRoom naming the resource when no node has `cpus` CPUs (and `gpus` GPUs, and
    `memory_mb` of Ray's schedulable memory)."""
    have = nodes()
    if any(n.cpus >= cpus and n.gpus >= gpus and n.memory_mb >= memory_mb for n in have):
        return
    biggest = max(have, key=lambda n: (n.gpus, n.cpus, n.memory_mb), default=Node(0, 0, 0))
    raise NoRoom(f"{what} asks for {_describe(cpus, gpus, memory_mb)}; the largest node has "
                 f"{biggest.cpus:g} CPU and {biggest.gpus:g} GPU"
                 + (f" and {biggest.memory_mb:.0f} MiB of memory" if memory_mb else ""))


def etl_actors(cpus_per_actor: float, items: int, min_actors: int | None = None,
               max_actors: int | None = None, gpus: float = 0.0,
               memory_mb: float = 0.0) -> int:
    """How many ETL actors: as many as the nodes hold (each node counted on its own, by
    its CPUs, GPUs and memory), within [min, max] (arguments, else LOOM_MIN_ACTORS /
    LOOM_MAX_ACTORS) and never more than there are items."""
    check_fits(cpus_per_actor, gpus, what="an ETL actor", memory_mb=memory_mb)
    fit = sum(per_node(n, cpus_per_actor, gpus, memory_mb) for n in nodes())
    lo = min_actors if min_actors is not None else (_env_int(MIN_ACTORS_ENV) or 1)
    hi = max_actors if max_actors is not None else _env_int(MAX_ACTORS_ENV)
    count = max(lo, fit)
    if hi is not None:
        count = min(count, hi)
    return max(1, min(count, items))


def embed_plan(max_cpus_per_actor: int = 8) -> tuple[int, float, float]:
    """(actors, CPUs, GPUs per actor) for batch inference: one actor per GPU where nodes
    have GPUs (with that GPU's share of its node's CPUs, one left for reads), otherwise
    actors of up to `max_cpus_per_actor` CPUs that each fit on one node."""
    have = nodes()
    gpu_nodes = [n for n in have if n.gpus >= 1]
    if gpu_nodes and use_gpu() is not False:
        cpus = min(max(1.0, math.floor(n.cpus / n.gpus) - 1) for n in gpu_nodes)
        return int(sum(n.gpus for n in gpu_nodes)), float(min(cpus, max_cpus_per_actor)), 1.0
    biggest = max((n.cpus for n in have), default=1.0)
    per = float(max(1, min(max_cpus_per_actor, math.floor(biggest))))
    actors = sum(math.floor(n.cpus / per) for n in have)
    return max(1, actors), per, 0.0


def use_gpu() -> bool | None:
    """LOOM_USE_GPU when set, else None (the caller decides from the cluster)."""
    value = os.environ.get(USE_GPU_ENV, "").strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    return None


def cluster_has_gpu() -> bool:
    """Training asks for GPUs when any node has one (the driver's own hardware is not the
    cluster's: on KubeRay the head has none), or when LOOM_USE_GPU says so."""
    forced = use_gpu()
    return forced if forced is not None else any(n.gpus >= 1 for n in nodes())


def train_worker_cpus(workers: int, data_cpus: float = 0.5) -> float:
    """CPUs each train worker reserves: its node's share, less `data_cpus` left free for the
    node's other tasks (the job driver, actors' reads: a worker that takes its whole node
    starves them; each rank reads its own shard files through loom's storage)."""
    have = sorted((n.cpus for n in nodes()), reverse=True)
    if not have:
        return 1.0
    # workers spread over the biggest nodes; each node keeps data_cpus for the pipeline
    per_node = math.ceil(workers / len(have))
    per = (have[min(len(have), workers) - 1] - data_cpus) / per_node
    return max(0.25, math.floor(per * 4) / 4)


@contextlib.contextmanager
def actor_deadline(what: str, cpus: float, gpus: float = 0.0,
                   default_s: int = 600, memory_mb: float = 0.0) -> Iterator[None]:
    """Ray Data waits at most LOOM_ACTOR_WAIT_S for a pool's first actors, then NoRoom
    names the request (without this it waits forever for resources nobody has)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = ctx.wait_for_min_actors_s
    ctx.wait_for_min_actors_s = _env_int(ACTOR_WAIT_ENV) or default_s
    try:
        yield
    except ray.exceptions.GetTimeoutError as exc:
        raise NoRoom(f"{what}: no actor of {_describe(cpus, gpus, memory_mb)}"
                     + f" started within {ctx.wait_for_min_actors_s}s; the cluster has no "
                     "free node with that much") from exc
    finally:
        ctx.wait_for_min_actors_s = before


def deadline_iter(what: str, cpus: float, gpus: float, make: Callable[[], Iterable]
                  ) -> Iterator:
    """Iterates `make()` under actor_deadline (its Datasets are made inside it)."""
    with actor_deadline(what, cpus, gpus):
        yield from make()
