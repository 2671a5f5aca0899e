"""Stages declare what one instance needs; the Ray adapter asks for it per actor and sizes
the pool per node, and the Beam adapter puts it on the stage's ParDo as resource hints."""

from __future__ import annotations

from functools import partial

import pytest
from apache_beam.transforms import resources as beam_resources
from loom.pipelines.ray import sizing
from loom.pipelines.ray.sizing import Node, NoRoom
from loom.pipelines.work import StageTask
from loom.schemas.spec import PreprocessingSpec
from loom.synth.stage import SynthStage
from loom.transforms.ingest import IngestConfig, IngestStage
from loom.transforms.stage import Resources

MIN_RAM = beam_resources.MinRamHint.urn


def test_stages_declare_and_the_task_reads_it(tmp_path):
    cfg = IngestConfig(spec=PreprocessingSpec(), decoder_memory_mb=1536)
    assert StageTask(partial(IngestStage, cfg), str(tmp_path)).resources == Resources(
        num_cpus=0.5, memory_mb=1536)
    no_isolation = IngestConfig(spec=PreprocessingSpec(), isolate=False)
    assert StageTask(partial(IngestStage, no_isolation), "x").resources.memory_mb == 0
    assert SynthStage.resources.num_cpus == 0.25  # waits on the LLM, not the CPU


def test_beam_hints_follow_the_declaration(tmp_path):
    from loom.pipelines.beam.runner import stage_transform

    cfg = IngestConfig(spec=PreprocessingSpec(), decoder_memory_mb=1536)
    hints = stage_transform(StageTask(partial(IngestStage, cfg), str(tmp_path))
                            ).get_resource_hints()
    assert hints[MIN_RAM] == str(1536 * 2**20).encode()
    assert stage_transform(StageTask(SynthStage, "x")).get_resource_hints() == {}


def test_hints_only_off_the_local_runner(tmp_path):
    """A hinted transform gets its own environment on the local runner, whose worker
    outlives a killed run (tests/pipelines/test_kill_readers.py hung on it): local runs go
    without hints, Dataflow gets them."""
    from loom.pipelines.beam import runner
    from loom.pipelines.engine import BeamOptions

    assert runner._local(BeamOptions().args(1))
    assert not runner._local(BeamOptions(options={"runner": "DataflowRunner"}).args(1))
    task = StageTask(partial(IngestStage, IngestConfig(spec=PreprocessingSpec())), "x")
    assert runner.stage_transform(task, hints=False).get_resource_hints() == {}


@pytest.fixture
def nodes(monkeypatch):
    def use(*spec: tuple[float, float, float]):
        monkeypatch.setattr(sizing, "nodes", lambda: [Node(*s) for s in spec])
    return use


def test_actor_counts_follow_each_nodes_scarcest_resource(nodes):
    nodes((4, 0, 8192), (4, 0, 2048))  # CPUs hold 8 + 8 half-CPU actors, memory 2 + 0
    assert sizing.etl_actors(0.5, 100, memory_mb=4096) == 2
    assert sizing.etl_actors(0.5, 100) == 16
    assert sizing.etl_actors(0.5, 100, memory_mb=4096, max_actors=1) == 1
    nodes((4, 0, 2048), (4, 0, 2048))
    with pytest.raises(NoRoom, match="4096 MiB of memory.*largest node.*2048 MiB"):
        sizing.etl_actors(0.5, 10, memory_mb=4096)


class _Probe:
    def teardown(self) -> None:
        pass


class _ProbeTask(StageTask):
    """Reports the resources Ray gave the actor that ran it."""

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=0.25, memory_mb=64)

    def open(self):
        return _Probe()

    def run(self, stage, item: dict) -> dict:
        import ray

        return item | {"assigned": ray.get_runtime_context().get_assigned_resources()}


def test_ray_actors_ask_for_the_declared_resources(ray_session, tmp_path):
    from loom.pipelines.ray.runner import run_ray

    out = run_ray(_ProbeTask(_Probe, str(tmp_path)), [{"name": "a"}, {"name": "b"}])
    assert sorted(r["name"] for r in out) == ["a", "b"]
    for r in out:
        assert r["assigned"]["CPU"] == pytest.approx(0.25)
        assert r["assigned"]["memory"] == pytest.approx(64 * 2**20)
