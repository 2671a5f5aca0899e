"""Beam adapter: any stage as a ParDo over work items, any exchange as GroupByKeys
(DirectRunner here, Dataflow there)."""

from __future__ import annotations

import json
import math
import uuid

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from loom.pipelines.engine import LOCAL_RUNNERS, BeamOptions
from loom.pipelines.exchange import Exchange
from loom.pipelines.progress import progress, report
from loom.pipelines.work import StageTask, dumps
from loom.schemas import storage


class _StageDoFn(beam.DoFn):
    """One stage per worker, built in `setup`; each element is one work item."""

    def __init__(self, task: StageTask, progress_key: str | None = None):
        self.task = task
        self.progress_key = progress_key
        self.stage = None

    def setup(self):
        self.stage = self.task.open()

    def process(self, item_json: str):
        result = self.task.run(self.stage, json.loads(item_json))
        report(self.progress_key, result)
        yield dumps(result)

    def teardown(self):
        if self.stage is not None:
            self.stage.teardown()


def stage_transform(task: StageTask, progress_key: str | None = None,
                    hints: bool = True) -> beam.ParDo:
    """The stage's ParDo with its declared needs as Beam resource hints (Dataflow picks
    workers with that much memory and those CPUs). Local runs go without: the local
    runner gives a hinted transform an environment of its own, whose worker outlives a
    killed run and holds its pipes."""
    pardo = beam.ParDo(_StageDoFn(task, progress_key))
    if not hints:
        return pardo
    need = task.resources
    given = {}
    if need.memory_mb:
        given["min_ram"] = f"{need.memory_mb}MiB"
    if need.num_cpus > 1:
        given["cpu_count"] = str(math.ceil(need.num_cpus))
    return pardo.with_resource_hints(**given) if given else pardo


def _local(args: list[str]) -> bool:
    runner = PipelineOptions(args).view_as(StandardOptions).runner or "DirectRunner"
    return runner in LOCAL_RUNNERS


def _write_results(results: list[str], uri: str) -> None:
    storage.write_atomic(uri, json.dumps(sorted(results)).encode())


def run_beam(task: StageTask, items: list[dict], pipeline_args: list[str] | None = None,
             workers: int = 2, options: BeamOptions | None = None) -> list[dict]:
    """Runs the items; results come back through one small JSON object next to the data.
    `options` (a job spec's `beam_options`) choose the runner; `pipeline_args` override all."""
    args = pipeline_args or (options or BeamOptions()).args(workers)
    results_uri = storage.join(task.version_dir, "_work", f"beam-{uuid.uuid4().hex}.json")
    name = getattr(task.factory, "func", task.factory).__name__
    with progress(items, name) as (key, _), beam.Pipeline(options=PipelineOptions(args)) as p:
        (
            p
            | "Items" >> beam.Create([dumps(i) for i in items])
            | "Spread" >> beam.Reshuffle()
            | "Stage" >> stage_transform(task, key, hints=not _local(args))
            | "Collect" >> beam.combiners.ToList()
            | "Results" >> beam.Map(_write_results, results_uri)
        )
    out = [json.loads(r) for r in json.loads(storage.read_bytes(results_uri))]
    storage.delete(results_uri)
    return out


def run_beam_exchange(exchange: Exchange, items: list[dict],
                      pipeline_args: list[str] | None = None, workers: int = 2,
                      options: BeamOptions | None = None) -> list[tuple[str, bytes]]:
    """The exchange as FlatMap, then GroupByKey + FlatMap per reduce: the rows go through
    the runner's shuffle; the last step's (small) pairs come back through one JSON object.
    Each step's output is a list, not the step's generator: on the multi-threaded local
    runner (Beam 2.77) runs of a generator's outputs went missing (a shard short of rows)."""
    args = pipeline_args or (options or BeamOptions()).args(workers)
    results_uri = storage.join(exchange.version_dir, "_work", f"beam-{uuid.uuid4().hex}.json")
    with beam.Pipeline(options=PipelineOptions(args)) as p:
        pairs = (
            p
            | "Items" >> beam.Create([dumps(i) for i in items])
            | "Spread" >> beam.Reshuffle()
            | "Map" >> beam.FlatMap(lambda s: list(exchange.map(json.loads(s))))
        )
        for n, reduce in enumerate(exchange.reduces):
            pairs = (pairs
                     | f"Group{n}" >> beam.GroupByKey()
                     | f"Reduce{n}" >> beam.FlatMap(lambda kv, r=reduce: list(r(kv[0], list(kv[1])))))
        (
            pairs
            | "Text" >> beam.Map(lambda kv: json.dumps([kv[0], kv[1].decode()]))
            | "Collect" >> beam.combiners.ToList()
            | "Results" >> beam.Map(_write_results, results_uri)
        )
    out = [(k, v.encode()) for k, v in map(json.loads, json.loads(storage.read_bytes(results_uri)))]
    storage.delete(results_uri)
    return sorted(out)
