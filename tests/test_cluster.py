"""The demo chain on a real three-node Ray cluster whose nodes share no disk (tests/cluster.py).

`loom submit` sends the chain with a gs:// workdir (the GCS emulator on the bridge address):
ingest on Beam and on Ray, synth, shard, train pft on two workers, mine, synth again with the
round-trip filter on the pft checkpoint, shard, train ft,
eval, report; then backfill through the Jobs API. It checks that the jobs succeed, that
tasks and actors ran on both worker nodes (node ids from Ray's state API), that the two
train workers were on two nodes, that every output, checkpoint and report is on gs://, and
that nothing was left on a worker node's disk (its private tmpfs over the work folder, where
its TMPDIR also points). A local path is refused before any work.

Run: `make test-cluster` (root: ip netns, unshare -m). A few minutes.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time

import pytest

from tests.cluster import Cluster, can_build, cluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
BUCKET = "loom-cluster"
TRAIN = "{epochs: 2, batch_size: 8, dim: 32, layers: 1, heads: 2, embed_dims: [16, 32], " \
        "warmup_steps: 2}"


def chain_spec(workdir: str, media: str, engine: str = "ray") -> str:
    return f"""name: cluster
workdir: {workdir}
engine: {engine}
stages:
  - {{stage: ingest, id: ingest, input: "{media}"}}
  - {{stage: synth, id: synth, examples: "${{ingest}}", llm: {{backend: offline}}}}
  - {{stage: shard, id: shard_pft, input: "${{synth}}", rows_per_shard: 16}}
  - {{stage: train, id: train_pft, shards: "${{shard_pft}}", train_stage: pft, workers: 2,
     config: {TRAIN}}}
  - {{stage: mine, id: mine, pairs: "${{synth}}", checkpoint: "${{train_pft}}",
     config: {{negatives: 2}}}}
  - {{stage: synth, id: synth_rt, examples: "${{ingest}}", llm: {{backend: offline}},
     checkpoint: "${{train_pft}}", filters: {{roundtrip_k: 1}}}}
  - {{stage: shard, id: shard_ft, input: "${{mine}}", rows_per_shard: 16}}
  - {{stage: train, id: train_ft, shards: "${{shard_ft}}", train_stage: ft,
     init: "${{train_pft}}", workers: 2, config: {TRAIN}}}
  - {{stage: eval, id: eval, pairs: "${{synth}}", checkpoint: "${{train_ft}}"}}
"""


def submit(c: Cluster, spec_path: str, *extra: str) -> tuple[int, dict, str]:
    """`loom submit` as a user runs it: (exit code, its last JSON line, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "loom.jobs.cli", "submit", spec_path, "--address", c.dashboard,
         "--env", f"STORAGE_EMULATOR_HOST={c.emulator_url()}", "--timeout", "1500", *extra],
        capture_output=True, text=True, timeout=1800,
        env=os.environ | {"STORAGE_EMULATOR_HOST": c.emulator_url()})
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    return proc.returncode, json.loads(lines[-1]) if lines else {}, proc.stderr


def placements(c: Cluster, job_ids: list[str]) -> dict[str, set[str]]:
    """Actor class / task name -> the node IPs it ran on, for these jobs (Ray state API)."""
    from ray.util.state import list_actors, list_nodes, list_tasks

    ip_of = {n.node_id: n.node_ip for n in list_nodes(address=c.dashboard)}
    out: dict[str, set[str]] = collections.defaultdict(set)
    jobs = {j for j in job_ids}
    from ray.job_submission import JobSubmissionClient

    hex_ids = {JobSubmissionClient(c.dashboard).get_job_info(j).job_id for j in jobs}
    for a in list_actors(address=c.dashboard, limit=10000, detail=True):
        if a.job_id in hex_ids and a.node_id:
            out[f"actor {a.class_name}"].add(ip_of.get(a.node_id, a.node_id))
    for t in list_tasks(address=c.dashboard, limit=10000, detail=True):
        if t.job_id in hex_ids and t.node_id and t.type == "NORMAL_TASK":
            out[f"task {t.name}"].add(ip_of.get(t.node_id, t.node_id))
    return out


@pytest.fixture(scope="module")
def three_nodes():
    why = can_build()
    if why:
        pytest.fail(f"the cluster test cannot run here: {why}")  # CI runs as root
    with cluster(workers=2, cpus_per_worker=1, bucket=BUCKET) as c, \
            pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", c.emulator_url())
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.delenv("RAY_ADDRESS", raising=False)
        yield c


def test_demo_chain_on_two_worker_nodes_over_gs(three_nodes, tmp_path):
    c = three_nodes
    from loom.jobs.corpus import generate_corpus
    from loom.schemas import storage

    t0 = time.monotonic()
    corpus = f"gs://{BUCKET}/corpus"
    generate_corpus(corpus, 24, 24, seed=0)
    media = storage.join(corpus, "media")
    workdir = f"gs://{BUCKET}/run"

    # A local path on a multi-node cluster: refused before any work, naming the fix.
    local = c.work / "corpus"
    generate_corpus(str(local), 2, 2, seed=0, bad_files=False)
    spec = tmp_path / "local.yaml"
    spec.write_text(chain_spec(str(c.work / "run"), str(local / "media")))
    code, out, err = submit(c, str(spec))
    assert code == 2, (out, err)
    assert "gs://" in err and "--shared-fs" in err
    # refused before the cluster: the failure JSON names submit, and no job was made
    assert out["stage"] == "submit" and out["exit_code"] == 2 and "job_id" not in out
    assert not storage.exists(str(c.work / "run"))
    # ... and by the job itself when a local path reaches the cluster some other way
    refused = run_command(c, ["ingest", "--input", str(local / "media"), "--output",
                              f"{workdir}-local"], expect="FAILED")
    assert "--shared-fs" in refused["logs"] and "exit code 2" in refused["message"]
    assert not storage.exists(f"{workdir}-local")

    # Beam ingest of the same media (the driver's DirectRunner reads gs:// too).
    spec = tmp_path / "beam.yaml"
    spec.write_text(f"name: beam\nworkdir: {workdir}-beam\nengine: beam\nstages:\n"
                    f"  - {{stage: ingest, id: ingest, input: \"{media}\"}}\n")
    code, beam_out, err = submit(c, str(spec))
    assert code == 0, (beam_out.get("logs_tail"), err)
    assert beam_out["stages"]["ingest"]["counts"]["examples"] >= 40

    # The whole chain on Ray.
    spec = tmp_path / "chain.yaml"
    spec.write_text(chain_spec(workdir, media))
    code, out, err = submit(c, str(spec))
    assert code == 0, (out.get("logs_tail"), err)
    assert out["status"] == "SUCCEEDED"
    stages = out["stages"]
    assert stages["ingest"]["counts"]["examples"] == beam_out["stages"]["ingest"]["counts"][
        "examples"]
    assert stages["synth"]["counts"]["pairs"] > 0
    # the round trip (Ray steps, gs:// cache) dropped some pairs and only those
    rt = stages["synth_rt"]["counts"]
    assert rt["filtered_roundtrip"] > 0
    assert rt["pairs"] + rt["filtered_roundtrip"] == stages["synth"]["counts"]["pairs"]
    for name, res in stages.items():
        for uri in [res.get("uri"), *res.get("datasets", {}).values()]:
            if uri:
                assert uri.startswith(f"gs://{BUCKET}/"), (name, uri)
    for name in ("train_pft", "train_ft"):
        ckpt = storage.join(stages[name]["checkpoint_root"], stages[name]["checkpoint"])
        assert ckpt.startswith("gs://") and storage.exists(storage.join(ckpt, "state.json"))
    for report in (out["report"], out["result"]["report_html"]):
        assert report.startswith("gs://") and storage.exists(report)

    # Backfill with the ft checkpoint, through the Jobs API (a command, not a spec).
    backfill = run_command(c, [
        "backfill", "--input", media, "--output", f"{workdir}/backfill",
        "--checkpoint", stages["train_ft"]["checkpoint"],
        "--checkpoint-root", stages["train_ft"]["checkpoint_root"], "--faiss-index"])
    assert backfill["result"]["uri"].startswith("gs://")
    assert storage.exists(backfill["result"]["index"])  # built by a Ray task, on gs://
    wall = time.monotonic() - t0

    where = placements(c, [beam_out["job_id"], out["job_id"], backfill["job_id"]])
    workers = {n.ip for n in c.workers}
    print(f"\ncluster chain wall time: {wall:.0f}s")
    for name, ips in sorted(where.items()):
        print(f"  {name}: {sorted(ips)}")
    ran_on = set().union(*where.values())
    assert workers <= ran_on, where
    trainers = where.get("actor RayTrainWorker", set())
    assert trainers == workers, where  # two train workers, one per node
    etl = [k for k in where if "_StageActor" in k]
    assert etl and workers <= set().union(*(where[k] for k in etl)), where
    for node in c.workers:
        assert c.node_files(node) == [], node.name  # nothing on the node's own disk


def run_command(c: Cluster, argv: list[str], expect: str = "SUCCEEDED") -> dict:
    """A loom command on the cluster through the Jobs API, with loom's runtime env."""
    from loom.jobs.submit import _last_json, runtime_env
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(c.dashboard)
    spec_dir = os.path.join(str(c.work), "..", "cmd")
    os.makedirs(spec_dir, exist_ok=True)
    job = client.submit_job(
        entrypoint="python -m loom.jobs.cli " + " ".join(argv),
        runtime_env=runtime_env(spec_dir, {"STORAGE_EMULATOR_HOST": c.emulator_url()},
                                modules_dir=os.path.join(spec_dir, f"m-{time.time_ns()}")))
    deadline = time.monotonic() + 900
    while (status := str(client.get_job_status(job).value)) not in (
            "SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, f"{argv[0]} still {status}"
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert status == expect, logs[-3000:]
    return {"job_id": job, "result": _last_json(logs), "logs": logs,
            "message": client.get_job_info(job).message or ""}
