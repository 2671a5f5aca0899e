"""Multi-node from configuration, local paths refused there, and sizes from single nodes."""

from __future__ import annotations

import pytest
from loom.pipelines import cluster
from loom.pipelines.common import BadInput
from loom.pipelines.ray import sizing
from loom.pipelines.ray.sizing import Node, NoRoom
from typer.testing import CliRunner


@pytest.mark.parametrize("address,multi", [
    ("", False), ("auto", False), ("local", False), ("127.0.0.1:6379", False),
    ("http://127.0.0.1:8265", False), ("localhost:6379", False),
    ("10.2.3.4:6379", True), ("http://ray-head:8265", True), ("ray://head.svc:10001", True),
])
def test_multi_node_comes_from_the_address(address, multi):
    assert cluster.is_multi_node(address) is multi


def test_local_paths_refused_on_a_multi_node_cluster(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.2.3.4:6379")
    monkeypatch.delenv(cluster.SHARED_FS_ENV, raising=False)
    with pytest.raises(BadInput, match=r"input=/data/raw.*gs://.*--shared-fs"):
        cluster.check_paths(input="/data/raw", output="gs://b/out")
    cluster.check_paths(input="gs://b/raw", output="gs://b/out")  # fine
    monkeypatch.setenv(cluster.SHARED_FS_ENV, "1")
    cluster.check_paths(input="/data/raw")  # the user says every node mounts it
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    monkeypatch.delenv(cluster.SHARED_FS_ENV)
    cluster.check_paths(input="/data/raw")  # one machine


def test_submit_refuses_local_paths_before_contacting_the_cluster(tmp_path):
    from loom.jobs.cli import app

    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: x\nworkdir: gs://b/w\nstages:\n"
                    f"  - {{stage: ingest, id: i, input: {tmp_path}/raw}}\n")
    # 192.0.2.1 (TEST-NET): nothing answers there; a refusal never tries
    res = CliRunner().invoke(app, ["submit", str(spec), "--address", "http://192.0.2.1:8265"])
    assert res.exit_code == 2, res.output
    assert "gs://" in res.stderr and "--shared-fs" in res.stderr and "stages[0].input" in res.stderr


@pytest.fixture
def nodes(monkeypatch):
    def use(*spec: tuple[float, float]):
        monkeypatch.setattr(sizing, "nodes", lambda: [Node(c, g) for c, g in spec])
    monkeypatch.delenv(sizing.USE_GPU_ENV, raising=False)
    return use


def test_embed_actors_fit_one_node_each(nodes):
    nodes((1, 0), (1, 0), (1, 0))  # three 1-CPU nodes: was one 3-CPU actor (never placed)
    assert sizing.embed_plan() == (3, 1.0, 0.0)
    nodes((2, 0), (4, 0))  # the shipped RayJob's head + worker: was one 6-CPU actor
    assert sizing.embed_plan() == (1, 4.0, 0.0)
    nodes((7, 0), (7, 0), (7, 1))  # a GPU node: one actor per GPU
    assert sizing.embed_plan() == (1, 6.0, 1.0)


def test_etl_actor_counts_follow_the_nodes(nodes, monkeypatch):
    nodes((1, 0), (1, 0))
    assert sizing.etl_actors(0.5, items=100) == 4
    assert sizing.etl_actors(0.5, items=3) == 3
    nodes(*[(8, 0)] * 4)
    assert sizing.etl_actors(0.5, items=1000) == 64  # was 2 whatever the cluster
    assert sizing.etl_actors(0.5, items=1000, max_actors=10) == 10
    monkeypatch.setenv(sizing.MIN_ACTORS_ENV, "80")
    assert sizing.etl_actors(0.5, items=1000) == 80
    with pytest.raises(NoRoom, match="asks for 16 CPU; the largest node has 8 CPU"):
        sizing.etl_actors(16, items=10)


def test_training_leaves_cpu_for_its_data_and_asks_the_cluster_for_gpus(nodes, monkeypatch):
    nodes((0, 0), (1, 0), (1, 0))
    assert sizing.train_worker_cpus(2) == 0.5  # two 1-CPU nodes: each keeps 0.5 for reads
    nodes((2, 0),)
    assert sizing.train_worker_cpus(2) == 0.75
    assert sizing.cluster_has_gpu() is False
    nodes((0, 0), (8, 1))  # the driver has no GPU; a worker node does
    assert sizing.cluster_has_gpu() is True
    monkeypatch.setenv(sizing.USE_GPU_ENV, "0")
    assert sizing.cluster_has_gpu() is False


def test_actor_pool_waits_with_a_deadline_and_names_the_resource(ray_session, monkeypatch):
    import numpy as np
    import ray
    from ray.data import ActorPoolStrategy

    class Never:
        def __call__(self, batch):
            return batch

    monkeypatch.setenv(sizing.ACTOR_WAIT_ENV, "5")
    with pytest.raises(NoRoom, match=r"embed: no actor of 0.5 CPU started within 5s"):
        with sizing.actor_deadline("embed", 0.5):
            ds = ray.data.from_items([{"x": 1}]).map_batches(
                Never, compute=ActorPoolStrategy(min_size=1, max_size=1), num_cpus=0.5,
                resources={"no_such_node": 1})
            np.asarray(ds.take_all())


def test_spec_paths_are_the_ones_the_spec_sets():
    """synth's and eval's `checkpoint_root` default ("checkpoints") is no path a run reads
    when there is no checkpoint or it is a step's output (its root comes from that step):
    not refused; one the spec writes out is."""
    from loom.jobs.spec import load_spec

    text = """name: x
workdir: gs://b/w
stages:
  - {stage: synth, id: synth, examples: gs://b/examples}
  - {stage: train, id: train, shards: gs://b/shards, train_stage: pft}
  - {stage: eval, id: eval, pairs: "${synth}", checkpoint: "%s"}
"""
    address = "10.2.3.4:6379"
    cluster.check_spec_paths(load_spec(text % "${train}"), address=address, shared=False)
    with pytest.raises(BadInput, match=r"stages\[2\]\.checkpoint_root=/data/ck"):
        cluster.check_spec_paths(load_spec(text % 'pft-1", checkpoint_root: "/data/ck'),
                                 address=address, shared=False)
