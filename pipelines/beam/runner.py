"""Beam adapter: any stage as a ParDo over work items (DirectRunner here, Dataflow there)."""

from __future__ import annotations

import contextlib
import contextvars
import json
import uuid
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from loom.pipelines.progress import progress, report
from loom.pipelines.runner import StageTask, dumps
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


def _write_results(results: list[str], uri: str) -> None:
    storage.write_atomic(uri, json.dumps(sorted(results)).encode())


_OPTIONS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("loom_beam_options",
                                                                      default=None)


@contextlib.contextmanager
def beam_options(options: dict) -> Iterator[None]:
    """Pipeline options for every Beam stage run inside (a job spec's `beam_options`:
    e.g. runner DataflowRunner, project, region, temp_location, sdk_container_image)."""
    token = _OPTIONS.set(dict(options))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def default_args(workers: int = 2) -> list[str]:
    """DirectRunner flags by default; the options in force (beam_options) override them."""
    opts = {"runner": "DirectRunner", "direct_num_workers": workers,
            "direct_running_mode": "multi_threading"}
    given = _OPTIONS.get() or {}
    if given.get("runner", "DirectRunner") != "DirectRunner":
        opts = {}
    opts |= given
    return [f"--{k}" if v is True else f"--{k}={v}" for k, v in opts.items() if v is not False]


def run_beam(task: StageTask, items: list[dict], pipeline_args: list[str] | None = None,
             workers: int = 2) -> list[dict]:
    """Runs the items; results come back through one small JSON object next to the data."""
    args = pipeline_args or default_args(workers)
    results_uri = storage.join(task.version_dir, "_work", f"beam-{uuid.uuid4().hex}.json")
    name = getattr(task.factory, "func", task.factory).__name__
    with progress(items, name) as (key, _), beam.Pipeline(options=PipelineOptions(args)) as p:
        (
            p
            | "Items" >> beam.Create([dumps(i) for i in items])
            | "Spread" >> beam.Reshuffle()
            | "Stage" >> beam.ParDo(_StageDoFn(task, key))
            | "Collect" >> beam.combiners.ToList()
            | "Results" >> beam.Map(_write_results, results_uri)
        )
    out = [json.loads(r) for r in json.loads(storage.read_bytes(results_uri))]
    storage.delete(results_uri)
    return out
