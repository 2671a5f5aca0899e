"""A training worker SIGKILLed mid-run: Ray Train restarts it, it resumes from the last
checkpoint (restored step recorded) and the run completes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from loom.jobs.corpus import generate_corpus
from loom.models.checkpoint import load_checkpoint, resolve
from loom.pipelines.ingest import run_ingest
from loom.pipelines.shard import run_shard
from loom.pipelines.synth import run_synth
from loom.pipelines.train import TrainConfig, TrainStage, run_train


@pytest.mark.slow
def test_killed_worker_restarts_and_resumes(tmp_path, ray_session):
    generate_corpus(str(tmp_path / "c"), 40, 40, seed=7)
    ex = run_ingest(str(tmp_path / "c" / "media"), str(tmp_path / "ex"))
    pairs = run_synth(ex["uri"], str(tmp_path / "pairs"))
    shards = run_shard(pairs["uri"], str(tmp_path / "shards"), rows_per_shard=64)
    cfg = TrainConfig(epochs=3, batch_size=4, checkpoint_every=5, dim=32, layers=1, heads=2,
                      embed_dims=(16, 32))
    root = str(tmp_path / "ckpt")
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(
        run_train(shards["uri"], root, TrainStage.PFT, cfg, max_failures=2)), daemon=True)
    worker.start()
    killed_at = None
    deadline = time.monotonic() + 240
    while worker.is_alive() and time.monotonic() < deadline:
        runs = [d for d in (tmp_path / "ckpt").glob("pft-*") if (d / "worker.pid").exists()]
        if runs and (runs[0] / "latest.json").exists():  # written after a step's files
            latest = json.loads((runs[0] / "latest.json").read_text())["step"]
            os.kill(int((runs[0] / "worker.pid").read_text()), signal.SIGKILL)
            killed_at = latest
            break
        time.sleep(0.05)
    worker.join(timeout=300)
    assert killed_at is not None, "no checkpoint appeared before the run ended"
    assert out.get("checkpoint"), out
    final = load_checkpoint(root, resolve(root, out["version"]))
    assert final.state["complete"] is True
    assert final.state["resumed_from"] and final.state["resumed_from"][0] >= killed_at
    steps_per_epoch = shards["counts"]["rows"] // cfg.batch_size
    assert final.state["step"] == steps_per_epoch * cfg.epochs
    # metrics.parquet keeps every step, the ones before the resume included, once each.
    import pyarrow.parquet as pq

    steps = pq.read_table(tmp_path / "ckpt" / out["version"] / "metrics.parquet")["step"]
    assert steps.to_pylist() == list(range(1, final.state["step"] + 1))
    # A rerun of the complete run is reused, not trained again.
    assert run_train(shards["uri"], root, TrainStage.PFT, cfg)["reused"] is True
